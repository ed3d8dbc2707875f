"""Self-supervised pretraining of the poster network and `-p init NAME`, on the demo set, tiny."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import movie_genre.train as training
from movie_genre.checkpoints import BACKBONE_FILE, file_digest, load_checkpoint, save_backbone
from movie_genre.demo import make_demo
from movie_genre.model import poster_encoder
from movie_genre.train import TrainConfig, check_fold, train_fold

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL = dict(width=16, depths='1,1', image_size=32)  # a tiny poster network


@pytest.fixture
def demo(tmp_path, monkeypatch):
    "A tiny demo set; the poster cache in the test's folder."
    monkeypatch.setenv('MOVIE_GENRE_CACHE', str(tmp_path / 'cache'))
    return make_demo(tmp_path / 'data', n_train=24, n_test=6)


def cli(*args, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if k != 'IN_TEST'}
    return subprocess.run([BIN / 'movie-genre', *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env)


def fake_backbone(runs: Path, name='bb', **settings) -> torch.nn.Module:
    "A backbone file as a pretraining leaves it, with weights no fresh network has."
    settings = {'arch': 'resnet', **SMALL, **settings}
    torch.manual_seed(123)
    encoder = poster_encoder(settings['arch'], settings['width'], settings['depths'])
    with torch.no_grad():
        for p in encoder.parameters(): p.add_(torch.randn_like(p))
    (runs / name).mkdir(parents=True, exist_ok=True)
    save_backbone(runs / name / BACKBONE_FILE, encoder, {**settings, 'method': 'simclr', 'epochs': 1}, 'digest', 30)
    return encoder


def test_a_fold_with_init_starts_from_the_backbone_and_records_it(demo, tmp_path, monkeypatch):
    "The model train_fold builds has exactly the backbone's poster weights before its first step; config.json names init, environment.json its content."
    runs = tmp_path / 'runs'
    encoder = fake_backbone(runs)
    before = {}
    def spy(*args, **kwargs):  # the real initial_model, its poster weights copied before any step changes them
        model, backbone = initial_model(*args, **kwargs)
        before.update({k: v.clone() for k, v in model.image_encoder.state_dict().items()})
        return model, backbone
    initial_model = training.initial_model
    monkeypatch.setattr(training, 'initial_model', spy)
    cfg = TrainConfig(data_dir=str(demo), runs_dir=str(runs), run_name='r', folds=2, epochs=1, batch_size=8, device='cpu', amp=False,
                      init='bb', **SMALL)
    train_fold(cfg)
    assert before and all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert json.loads((cfg.fold_dir / 'config.json').read_text())['init'] == 'bb'
    recorded = json.loads((cfg.fold_dir / 'environment.json').read_text())['backbone']
    assert recorded['sha256'] == file_digest(runs / 'bb' / BACKBONE_FILE) and recorded['posters'] == 30
    assert load_checkpoint(cfg.fold_dir / 'model.pt')['backbone']['sha256'] == recorded['sha256']


def test_a_backbone_that_does_not_fit_is_refused_before_training(demo, tmp_path):
    "Another width (or no backbone at all) is refused by check_fold, and by `movie-genre train` before any fold folder exists."
    runs = tmp_path / 'runs'
    fake_backbone(runs)
    run = dict(data_dir=str(demo), runs_dir=str(runs), run_name='r', folds=2, epochs=1, image_size=32, depths='1,1', init='bb')
    with pytest.raises(ValueError, match=r"width 16 \(the run has 32\).*-p width 16"): check_fold(TrainConfig(**run, width=32))
    with pytest.raises(FileNotFoundError, match='movie-genre pretrain --name nothing'): check_fold(TrainConfig(**{**run, 'init': 'nothing'}, width=16))
    r = cli('train', '--run-name', 'r', '--folds', 1, '-p', 'data_dir', demo, '-p', 'runs_dir', runs, '-p', 'folds', 2, '-p', 'epochs', 1,
            '-p', 'image_size', 32, '-p', 'depths', '1,1', '-p', 'init', 'bb')  # width 32, the default
    assert r.returncode == 1 and 'fold 1 FAILED: ValueError: init \'bb\'' in r.stdout and 'width 16' in r.stdout, r.stdout + r.stderr
    assert not (runs / 'r' / 'fold1').exists()
