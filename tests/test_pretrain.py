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


def test_a_fold_with_init_starts_from_the_backbone_and_records_it(demo, tmp_path, monkeypatch, capsys):
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
    assert f"fold 1 of r: poster network from {runs / 'bb' / BACKBONE_FILE} (simclr, 1 epochs, sha256 {recorded['sha256'][:12]})" in capsys.readouterr().out


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


def test_a_new_fold_refuses_a_backbone_changed_since_the_run_s_first_fold(demo, tmp_path):
    "A pretraining continued (more epochs) or redone after fold 1 started rewrites backbone.pt: fold 2 must not silently start from other weights."
    runs = tmp_path / 'runs'
    fake_backbone(runs)
    run = dict(data_dir=str(demo), runs_dir=str(runs), run_name='r', folds=2, epochs=1, batch_size=8, device='cpu', amp=False, init='bb', **SMALL)
    train_fold(TrainConfig(**run, fold=1))
    check_fold(TrainConfig(**run, fold=2))  # the same backbone: fine
    encoder = fake_backbone(runs)
    with torch.no_grad(): next(encoder.parameters()).add_(1.0)
    save_backbone(runs / 'bb' / BACKBONE_FILE, encoder, {'arch': 'resnet', **SMALL, 'method': 'simclr', 'epochs': 2}, 'digest', 30)
    with pytest.raises(ValueError, match=r"fold 1 of run r started from other content.*new run name.*overwrite True"):
        check_fold(TrainConfig(**run, fold=2))
    check_fold(TrainConfig(**run, fold=2), retrained=(1,))  # every fold retrained together: they all start from the new one


def tiny_pretraining(data, tmp_path, **settings) -> 'PretrainConfig':
    from movie_genre.pretrain import PretrainConfig
    return PretrainConfig(**{'name': 'pt', 'data_dir': str(data), 'runs_dir': str(tmp_path / 'runs'), 'reports_dir': str(tmp_path / 'reports'),
                             'epochs': 1, 'batch_size': 8, 'device': 'cpu', 'amp': False, **SMALL, **settings})


@pytest.mark.parametrize('method', ['simclr', 'vicreg'])
def test_pretraining_reads_no_label_and_changes_the_backbone(demo, tmp_path, method):
    "On a train.csv without its genres column, a few steps move the poster network away from its fresh weights; the backbone holds every poster (train and test)."
    from movie_genre.pretrain import PretrainNet, pretrain
    from movie_genre.train import seed_everything
    table = pd.read_csv(demo / 'train.csv')
    table.drop(columns='genres').to_csv(demo / 'train.csv', index=False)
    cfg = tiny_pretraining(demo, tmp_path, method=method)
    summary = pretrain(cfg)
    assert list(summary.columns) == ['epoch', 'loss', 'lr', 'seconds', 'images_per_s'] and summary['loss'].notna().all()
    backbone = load_checkpoint(cfg.folder / BACKBONE_FILE)
    assert backbone['posters'] == len(table) + len(pd.read_csv(demo / 'test.csv')) and backbone['config']['method'] == method
    seed_everything(cfg.seed)
    fresh = dict(PretrainNet(cfg).encoder.named_parameters())  # the weights it started from (not BatchNorm's running statistics,
    assert any(not torch.allclose(fresh[k], backbone['encoder'][k], rtol=0, atol=1e-6) for k in fresh)  # which move without a step)
    assert (tmp_path / 'reports' / 'pt' / 'pretrain_loss.png').is_file()
    for file in ('pretrain.json', 'summary.csv', 'last.pt', 'environment.json'): assert (cfg.folder / file).is_file(), file


def test_a_rerun_continues_from_last_pt_and_names_are_not_shared(demo, tmp_path, capsys):
    "epochs 1, then 2: the second run starts at epoch 2 from last.pt; another setting is refused by name; a training run and a pretraining never share a name."
    from movie_genre.pretrain import pretrain
    first = pretrain(tiny_pretraining(demo, tmp_path))
    second = pretrain(tiny_pretraining(demo, tmp_path, epochs=2))
    assert 'resuming pretrain pt at epoch 2' in capsys.readouterr().out
    assert list(second['epoch']) == [1, 2] and second['loss'].iloc[0] == first['loss'].iloc[0]
    assert load_checkpoint(tmp_path / 'runs' / 'pt' / BACKBONE_FILE)['config']['epochs'] == 2
    digest = file_digest(tmp_path / 'runs' / 'pt' / BACKBONE_FILE)  # what the runs started from it recorded
    pretrain(tiny_pretraining(demo, tmp_path, epochs=2, threads=1))  # finished, another thread count: nothing to do
    assert file_digest(tmp_path / 'runs' / 'pt' / BACKBONE_FILE) == digest, 'a rerun with nothing to do rewrote backbone.pt'
    with pytest.raises(ValueError, match=r"lr 0\.01 \(was 0\.002\)"): pretrain(tiny_pretraining(demo, tmp_path, epochs=3, lr=0.01))
    with pytest.raises(ValueError, match='is a pretraining.*-p init pt'):
        check_fold(TrainConfig(data_dir=str(demo), runs_dir=str(tmp_path / 'runs'), run_name='pt', folds=2))
    train_fold(TrainConfig(data_dir=str(demo), runs_dir=str(tmp_path / 'runs'), run_name='run', folds=2, epochs=1, device='cpu', **SMALL))
    with pytest.raises(ValueError, match='is a training run, not a pretraining'): pretrain(tiny_pretraining(demo, tmp_path, name='run'))
    from movie_genre.cli import check_runs
    from movie_genre.compare import list_runs
    listed = list_runs(tmp_path / 'runs')  # what `movie-genre runs` prints: a pretraining as one, beside the runs
    assert listed.loc['pt', 'kind'] == 'pretraining simclr' and listed.loc['pt', 'status'].startswith('backbone of 2 epochs')
    with pytest.raises(FileNotFoundError, match="'pt' in .* is a pretraining"): check_runs('pt', tmp_path / 'runs')  # evaluate, submit, predict, compare


def test_pretrain_command_refuses_a_missing_data_folder_in_one_line(tmp_path):
    r = cli('pretrain', '--name', 'p', '-p', 'data_dir', 'nowhere', '-p', 'runs_dir', 'runs', cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith('movie-genre pretrain: error: no ') and 'nowhere/train.csv' in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / 'runs').exists()


def test_the_pretrain_notebooks_parameters_cell_holds_the_config_defaults():
    import ast
    from dataclasses import fields
    from movie_genre.pretrain import PretrainConfig
    cells = [c for c in json.loads((ROOT / 'nbs' / '04e_pretrain.ipynb').read_text())['cells'] if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(cells) == 1
    values = {n.targets[0].id: ast.literal_eval(n.value) for n in ast.parse(''.join(cells[0]['source'])).body if isinstance(n, ast.Assign)}
    defaults = {f.name: f.default for f in fields(PretrainConfig)}
    assert {'name', 'data_dir', 'method', 'epochs', 'batch_size', 'arch', 'width', 'depths'} <= set(values)
    assert {k: defaults[k] for k in values} == values


def test_a_refused_rerun_on_other_posters_leaves_pretrain_json_as_it_was(demo, tmp_path):
    "The 'other posters' refusal comes before pretrain.json is written: it still holds the config the pretraining was made with."
    from movie_genre.pretrain import pretrain
    cfg = tiny_pretraining(demo, tmp_path)
    pretrain(cfg)
    recorded = (cfg.folder / 'pretrain.json').read_text()
    other = make_demo(tmp_path / 'other', n_train=20, n_test=4)
    with pytest.raises(ValueError, match='other posters'): pretrain(tiny_pretraining(other, tmp_path, epochs=2))
    assert (cfg.folder / 'pretrain.json').read_text() == recorded


def test_a_pretraining_whose_notebook_fails_to_start_is_listed_as_one(demo, tmp_path, monkeypatch):
    "movie-genre pretrain makes runs/<name>/logs before its notebook starts; if it fails there, movie-genre runs lists a pretraining not started, with its log."
    import movie_genre.cli as cli_module
    from movie_genre.compare import list_runs
    monkeypatch.setattr(cli_module, '_papermill_command', lambda *args: [sys.executable, '-c', 'raise SystemExit("no kernel")'])
    with pytest.raises(cli_module.NotebookFailed):
        cli_module.pretrain_command(dict(name='pt', data_dir=str(demo), runs_dir=str(tmp_path / 'runs'), **SMALL))
    assert (tmp_path / 'runs' / 'pt' / 'logs').is_dir()
    row = list_runs(tmp_path / 'runs').loc['pt']
    assert row['kind'] == 'pretraining' and row['status'].startswith('not started: ') and row['status'].endswith('attempt-1.log'), row
    with pytest.raises(ValueError, match='is a pretraining'):  # nor does a training run take its name
        check_fold(TrainConfig(data_dir=str(demo), runs_dir=str(tmp_path / 'runs'), run_name='pt', folds=2))


def test_pretrain_command_continues_with_the_recorded_settings(demo, tmp_path, monkeypatch):
    "movie-genre pretrain --name pt -p epochs 2 continues a finished 1-epoch pretraining with its other settings (width, data...), none repeated."
    import movie_genre.cli as cli_module
    from movie_genre.pretrain import pretrain
    pretrain(tiny_pretraining(demo, tmp_path))
    given = {}
    monkeypatch.setattr(cli_module, 'run_notebook', lambda name, output, params, echo=None: given.update(params))
    cli_module.pretrain_command(dict(name='pt', runs_dir=str(tmp_path / 'runs'), epochs=2))
    assert given['epochs'] == 2 and given['width'] == 16 and given['image_size'] == 32 and given['batch_size'] == 8, given
    assert Path(given['data_dir']).resolve() == demo.resolve() and 'device' not in given


def test_a_resumed_fold_says_which_backbone_it_started_from(demo, tmp_path, capsys):
    "A fold killed after its last checkpoint (before its predictions) resumes from last.pt and still names the backbone it started from."
    runs = tmp_path / 'runs'
    fake_backbone(runs)
    cfg = TrainConfig(data_dir=str(demo), runs_dir=str(runs), run_name='r', folds=2, epochs=1, batch_size=8, device='cpu', amp=False,
                      init='bb', **SMALL)
    train_fold(cfg)
    (cfg.fold_dir / 'oof.csv').unlink()  # what a kill between the last checkpoint and the predictions leaves
    capsys.readouterr()
    train_fold(cfg)
    out, sha = capsys.readouterr().out, file_digest(runs / 'bb' / BACKBONE_FILE)[:12]
    assert 'resuming fold 1 of r at epoch' in out and f'fold 1 of r: poster network from {runs / "bb" / BACKBONE_FILE} (simclr, 1 epochs, sha256 {sha})' in out, out
    # the pretraining redone since: the fold goes on with the weights it started from, and says that the file is another now
    (cfg.fold_dir / 'oof.csv').unlink()
    fake_backbone(runs, lr=0.1)  # redone with another lr: another file
    train_fold(cfg)
    out = capsys.readouterr().out
    assert f'(simclr, 1 epochs, sha256 {sha}), as it was when the fold started: {runs / "bb" / BACKBONE_FILE} holds another backbone now' in out, out


def test_a_search_that_varies_what_the_backbone_fixes_is_refused_before_any_trial(tmp_path):
    "`tune -p init NAME` with width in the space: a trial recipe the backbone does not fit fails untrained, before any fold."
    from optuna.distributions import CategoricalDistribution
    from movie_genre.tune import check_space, trial_configs
    runs = tmp_path / 'runs'
    fake_backbone(runs)  # width 16, depths 1,1
    fixed = {'init': 'bb', 'runs_dir': str(runs), 'depths': '1,1'}
    check_space({'width': CategoricalDistribution([16, 24])}, fixed)  # a width that may fit with other settings: judged per trial
    with pytest.raises(ValueError, match=r"invalid recipe, not trained: init 'bb'"): trial_configs({**fixed, 'width': 24}, 's-t0', [1])
    assert trial_configs({**fixed, 'width': 16}, 's-t0', [1])[0].init == 'bb'
