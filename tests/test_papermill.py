"""The design's entry point: `papermill nbs/04_train.ipynb out.ipynb -p fold K` from the repo root, and the driver."""
import ast
import json
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest

from movie_genre.demo import make_demo
from movie_genre.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TRAIN_NB = ROOT / 'nbs' / '04_train.ipynb'
BIN = Path(sys.executable).parent


def parameters_cell(path=TRAIN_NB):
    cells = [c for c in json.loads(path.read_text())['cells'] if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(cells) == 1, f'{path.name} needs exactly one cell tagged "parameters"'
    return ''.join(cells[0]['source'])


def test_parameters_cell_holds_the_config_defaults():
    tree = ast.parse(parameters_cell())
    values = {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)}
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    assert {'fold', 'folds', 'data_dir', 'run_name', 'arch', 'fusion', 'image_size', 'epochs', 'batch_size', 'lr',
            'weight_decay', 'loss', 'device', 'amp', 'seed', 'num_workers', 'patience'} <= set(values)
    assert {k: defaults[k] for k in values} == values


def test_nbdev_clean_keeps_the_parameters_tag(tmp_path):
    copy = tmp_path / '04_train.ipynb'
    shutil.copy(TRAIN_NB, copy)
    subprocess.run([BIN / 'nbdev_clean', '--fname', str(copy)], cwd=ROOT, check=True)
    assert parameters_cell(copy) == parameters_cell()


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp('data') / 'demo', n_train=96, n_test=16)


def clean_env(**extra) -> dict:
    "This process's environment without nbdev's IN_TEST, which would switch the notebooks to their tiny test runs."
    return {**{k: v for k, v in os.environ.items() if k != 'IN_TEST'}, **extra}


def papermill(*args, cwd=ROOT, env=None):
    env = {**clean_env(), 'MOVIE_GENRE_CACHE': str(Path(os.environ.get('TMPDIR', '/tmp')) / 'movie-genre-test-cache'), **(env or {})}
    return subprocess.run([BIN / 'papermill', str(TRAIN_NB.relative_to(ROOT)), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env)


def test_papermill_trains_the_requested_fold(demo, tmp_path):
    out = tmp_path / 'out.ipynb'
    r = papermill(out, '-p', 'fold', 3, '-p', 'data_dir', demo, '-p', 'runs_dir', tmp_path / 'runs', '-p', 'reports_dir',
                  tmp_path / 'reports', '-p', 'epochs', 2, '-p', 'image_size', 32, '-p', 'folds', 4, '-p', 'run_name', 'pm')
    assert r.returncode == 0, r.stderr[-3000:]
    fold_dir = tmp_path / 'runs' / 'pm' / 'fold3'
    assert json.loads((fold_dir / 'config.json').read_text())['fold'] == 3
    assert len(pd.read_csv(fold_dir / 'summary.csv')) == 2 and (fold_dir / 'oof.csv').exists()
    assert {p.name for p in (tmp_path / 'reports' / 'pm' / 'fold3').iterdir()} >= {'confusion_matrices.png', 'pr_curves.png'}


def test_papermill_rejects_an_unknown_parameter(demo, tmp_path):
    r = papermill(tmp_path / 'out.ipynb', '-p', 'fodl', 3, '-p', 'data_dir', demo, '-p', 'runs_dir', tmp_path)
    assert r.returncode != 0 and "unknown parameter(s) ['fodl']" in r.stderr
    assert not (tmp_path / 'demo').exists()


def test_papermill_without_data_says_what_to_do(tmp_path):
    r = papermill(tmp_path / 'out.ipynb', '-p', 'data_dir', tmp_path / 'nowhere', '-p', 'runs_dir', tmp_path / 'runs')
    assert r.returncode != 0 and 'movie-genre demo' in r.stderr and 'data/README.md' in r.stderr


def test_papermill_with_a_wrong_kernel_says_so(tmp_path):
    r = papermill(tmp_path / 'out.ipynb', '-k', 'no-such-kernel')
    assert r.returncode != 0 and 'no-such-kernel' in r.stderr


def test_driver_trains_folds_in_parallel_reports_a_failed_one_and_prints_their_table(demo, tmp_path):
    "Three folds on two 'GPUs' (CPU here); fold 2 has a corrupt checkpoint, fails, and the others still train."
    env = clean_env(MOVIE_GENRE_CACHE=str(tmp_path / 'cache'))
    broken = tmp_path / 'runs' / 'drv' / 'fold2'
    broken.mkdir(parents=True)
    (broken / 'last.pt').write_bytes(b'not a checkpoint')
    r = subprocess.run([BIN / 'movie-genre', 'train', '--run-name', 'drv', '--folds', '1-3', '--gpus', '0,1', '-p', 'data_dir', demo,
                        '-p', 'runs_dir', tmp_path / 'runs', '-p', 'reports_dir', tmp_path / 'reports', '-p', 'epochs', '1',
                        '-p', 'image_size', '32', '-p', 'folds', '3'], cwd=ROOT, capture_output=True, text=True, env=env)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert '2 of 3 folds trained' in r.stdout and 'fold 2: FAILED' in r.stdout and 'f1_macro' in r.stdout
    for k in (1, 3): assert (tmp_path / 'runs' / 'drv' / f'fold{k}' / 'oof.csv').exists()
    assert (broken / '04_train.ipynb').exists() and (broken / 'papermill.log').exists()
    bad = subprocess.run([BIN / 'movie-genre', 'train', '--run-name', 'drv', '--folds', '1', '-p', 'fodl', '1'],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and 'fodl' in bad.stderr and 'Traceback' not in bad.stderr
