"""The design's entry point: `papermill nbs/04_train.ipynb out.ipynb -p fold K` from the repo root, and the driver."""
import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
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
            'weight_decay', 'loss', 'device', 'amp', 'seed', 'num_workers', 'patience',
            'init', 'pseudo', 'pseudo_posters', 'pseudo_weight'} <= set(values)  # the unlabelled posters' levers too
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


def as_from_a_terminal():
    "A child's SIGINT as a terminal leaves it (Ctrl-C stops it), even when this suite runs as a shell's background job, which ignores SIGINT and passes that on."
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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


def driver(*args, tmp_path, env=None, **kwargs):
    "`movie-genre ARGS` from the repo root, on the tiny demo run settings."
    env = env or clean_env(MOVIE_GENRE_CACHE=str(tmp_path / 'cache'))
    return subprocess.run([BIN / 'movie-genre', *map(str, args)], cwd=ROOT, capture_output=True, text=True, env=env, **kwargs)


def tiny_params(demo, tmp_path) -> list:
    return ['-p', 'data_dir', demo, '-p', 'runs_dir', tmp_path / 'runs', '-p', 'reports_dir', tmp_path / 'reports',
            '-p', 'epochs', '1', '-p', 'image_size', '32', '-p', 'folds', '3']


def test_driver_trains_folds_in_parallel_reports_a_failed_one_and_prints_their_table(demo, tmp_path):
    "Three folds on two 'GPUs' (CPU here, through the Python API); fold 2 has a corrupt checkpoint, fails, and the others still train."
    broken = tmp_path / 'runs' / 'drv' / 'fold2'
    broken.mkdir(parents=True)
    (broken / 'last.pt').write_bytes(b'not a checkpoint')
    params = dict(run_name='drv', data_dir=str(demo), runs_dir=str(tmp_path / 'runs'), reports_dir=str(tmp_path / 'reports'),
                  epochs=1, image_size=32, folds=3)
    code = f'from movie_genre.cli import train_folds\ntrain_folds({params!r}, [1, 2, 3], gpus=["0", "1"])'
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                       env=clean_env(MOVIE_GENRE_CACHE=str(tmp_path / 'cache')))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert '2 of 3 folds trained' in r.stdout and 'fold 2 FAILED: CheckpointError:' in r.stdout and 'f1_macro' in r.stdout
    assert 'on GPU 0' in r.stdout and 'on GPU 1' in r.stdout
    assert f'{broken / "last.pt"} is damaged' in r.stdout  # the error's own line, not only "see the log"
    for k in (1, 3): assert (tmp_path / 'runs' / 'drv' / f'fold{k}' / 'oof.csv').exists()
    assert not (broken / 'logs').exists()  # refused before its process started: no attempt to keep
    bad = driver('train', '--run-name', 'drv', '--folds', '1', '-p', 'fodl', '1', tmp_path=tmp_path)
    assert bad.returncode == 2 and 'fodl' in bad.stderr and 'Traceback' not in bad.stderr


@pytest.mark.skipif(__import__('torch').cuda.is_available(), reason='a machine with GPUs has GPU 0')
def test_driver_refuses_gpus_that_do_not_exist(tmp_path):
    r = driver('train', '--run-name', 'g', '--gpus', '0', tmp_path=tmp_path)
    assert r.returncode == 2 and 'no CUDA GPU' in r.stderr and 'Traceback' not in r.stderr


def test_driver_keeps_every_attempt_and_types_its_parameters(demo, tmp_path):
    "A run named 2024 with depths 2 trains (papermill would read both as ints); a finished fold is not run again;"
    "overwrite retrains it without deleting the logs of the attempts before."
    args = ['train', '--run-name', '2024', '--folds', '1', '-p', 'depths', '2', *tiny_params(demo, tmp_path)]
    first = driver(*args, tmp_path=tmp_path)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    fold = tmp_path / 'runs' / '2024' / 'fold1'
    assert json.loads((fold / 'config.json').read_text())['run_name'] == '2024'
    again = driver(*args, tmp_path=tmp_path)
    assert again.returncode == 0 and 'finished already' in again.stdout and not (fold / 'logs' / 'attempt-2.log').exists()
    over = driver(*args, '-p', 'overwrite', 'True', tmp_path=tmp_path)
    assert over.returncode == 0, over.stdout[-2000:]
    assert {p.name for p in (fold / 'logs').iterdir()} == {'attempt-1.ipynb', 'attempt-1.log', 'attempt-2.ipynb', 'attempt-2.log'}
    assert 'training on cpu' in (fold / 'logs' / 'attempt-2.log').read_text()  # the device is said at the start
    assert json.loads((fold / 'environment.json').read_text())['device'] == 'cpu'


def test_ctrl_c_stops_the_driver_and_the_fold_resumes(demo, tmp_path):
    args = ['train', '--run-name', 'cc', '--folds', '1-3', *tiny_params(demo, tmp_path), '-p', 'epochs', '8']
    proc = subprocess.Popen([BIN / 'movie-genre', *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=clean_env(MOVIE_GENRE_CACHE=str(tmp_path / 'cache')), start_new_session=True,
                            preexec_fn=as_from_a_terminal)
    lines = []
    for line in proc.stdout:  # Ctrl-C (SIGINT to the whole process group, as a terminal sends it) after fold 1's epoch 2
        lines.append(line)
        if line.startswith('fold 1 epoch   2/8'): os.killpg(proc.pid, signal.SIGINT); break
    out = ''.join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 130 and 'interrupted' in out and 'FAILED' not in out, out[-3000:]
    assert not (tmp_path / 'runs' / 'cc' / 'fold2').exists()  # the driver stopped: fold 2 never started
    again = driver('train', '--run-name', 'cc', '--folds', '1', *tiny_params(demo, tmp_path), '-p', 'epochs', '8', tmp_path=tmp_path)
    assert again.returncode == 0 and 'resuming fold 1 of cc at epoch' in again.stdout, again.stdout[-2000:]


def test_the_training_notebook_config_cell_runs_again_in_a_live_kernel(tmp_path, monkeypatch):
    "In JupyterLab: run the whole notebook, edit a parameter, run the config cell again: a config, not a TypeError about `cfg`."
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell
    monkeypatch.setenv('IN_TEST', '1')  # the notebook's own tiny demo run
    monkeypatch.setenv('MOVIE_GENRE_CACHE', str(tmp_path / 'cache'))
    monkeypatch.chdir(ROOT)
    nb = read_nb(TRAIN_NB)
    shell = CaptureShell()
    shell.run_all(nb, exc_stop=True)
    out = shell.run('epochs = 3\ncfg = TrainConfig.from_notebook(globals(), _before_parameters)\nprint(cfg.epochs, type(result).__name__)')
    assert '3 dict' in str(out) and 'Error' not in str(out), out
    # a second Run All of the first cells, with the parameters cell edited: the edit counts, not the defaults
    code = [''.join(c.source) for c in nb.cells if c.cell_type == 'code']
    snapshot = next(c for c in code if '_before_parameters = set(globals())' in c)
    config_cell = next(c for c in code if 'from_notebook(globals(), _before_parameters)' in c)
    params = parameters_cell()
    assert 'lr = 3e-3' in params
    for cell in (snapshot, params.replace('lr = 3e-3', 'lr = 0.001'), config_cell): shell.run(cell)
    out = shell.run('print(cfg.lr)')
    assert '0.001' in str(out), out


def test_the_evaluation_parameters_cell_holds_the_config_defaults():
    from movie_genre.evaluate import EvaluateConfig
    tree = ast.parse(parameters_cell(ROOT / 'nbs' / '05_evaluate.ipynb'))
    values = {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)}
    assert values == {f.name: f.default for f in fields(EvaluateConfig)}


def test_importing_the_package_lets_idle_threads_sleep():
    "OMP_WAIT_POLICY=PASSIVE before torch starts its threads, unless the user set it."
    code = 'import os, movie_genre, torch; print(os.environ["OMP_WAIT_POLICY"])'
    env = {k: v for k, v in os.environ.items() if k != 'OMP_WAIT_POLICY'}
    assert subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env).stdout.strip() == 'PASSIVE'
    env['OMP_WAIT_POLICY'] = 'ACTIVE'
    assert subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env).stdout.strip() == 'ACTIVE'


def _fold_processes(driver_pid: int) -> list:
    "The driver's descendants: papermill, its kernel (a session of its own) and their workers."
    import psutil
    return psutil.Process(driver_pid).children(recursive=True)


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_driver_alone_stops_its_fold_at_once_and_the_fold_resumes(demo, tmp_path, signum):
    "`kill -TERM <driver>` (a scheduler, `timeout`) or `kill -INT <driver>`: every fold process ends within seconds, the exit code"
    "says which signal, and the same command resumes the fold; meanwhile the console had progress lines and the log grew live."
    import psutil
    args = ['train', '--run-name', 'sig', '--folds', '1', *tiny_params(demo, tmp_path), '-p', 'epochs', '8', '-p', 'batch_size', '16']
    env = clean_env(MOVIE_GENRE_CACHE=str(tmp_path / 'cache'), MOVIE_GENRE_PROGRESS_SECONDS='0')
    proc = subprocess.Popen([BIN / 'movie-genre', *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True, preexec_fn=as_from_a_terminal)  # its own group: only the driver gets the signal
    lines, log = [], tmp_path / 'runs' / 'sig' / 'fold1' / 'logs' / 'attempt-1.log'
    for line in proc.stdout:
        lines.append(line)
        if line.startswith('fold 1 epoch   2/8'): break
    assert 'fold 1 epoch   2/8' in log.read_text(), 'the log is written as the fold runs'  # `tail -f` follows it
    assert any(re.match(r'fold 1 epoch \d/8  batch \d+/\d+  \d+ img/s  ETA \d+:\d\d', l) for l in lines), ''.join(lines)
    children = _fold_processes(proc.pid)
    assert len(children) >= 2  # papermill and its kernel
    start = time.monotonic()
    os.kill(proc.pid, signum)  # the driver's PID alone
    out = ''.join(lines) + proc.communicate(timeout=60)[0]
    assert time.monotonic() - start < 15 and proc.returncode == 128 + signum, (proc.returncode, out[-3000:])
    assert 'interrupted' in out and 'FAILED' not in out and 'Kernel is running over TCP' not in out, out[-3000:]
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # no orphan keeps the lock or the CPU
    fold = tmp_path / 'runs' / 'sig' / 'fold1'
    assert len(pd.read_csv(fold / 'summary.csv')) < 8 and not (fold / 'oof.csv').exists()  # stopped, not waited for
    if signum == signal.SIGTERM:  # the same command resumes it (one resume is enough to show it)
        again = driver(*args, tmp_path=tmp_path)
        assert again.returncode == 0 and 'resuming fold 1 of sig at epoch' in again.stdout, again.stdout[-2000:]


def test_two_drivers_on_one_run_split_its_folds(demo, tmp_path):
    "Two `movie-genre train` started at once on one runs/ folder (two machines sharing it): each fold trains once, neither fails."
    env = clean_env(MOVIE_GENRE_CACHE=str(tmp_path / 'cache'))
    command = [BIN / 'movie-genre', 'train', '--run-name', 'shared', '--folds', '1-3', *map(str, tiny_params(demo, tmp_path))]
    drivers = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [d.communicate(timeout=600)[0] for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], '\n'.join(o[-2000:] for o in outputs)
    for k in (1, 2, 3):
        assert (tmp_path / 'runs' / 'shared' / f'fold{k}' / 'oof.csv').exists()
        trained = sum(f'fold {k}: trained' in o for o in outputs)
        assert trained == 1, f'fold {k} trained by {trained} drivers:\n' + '\n'.join(outputs)
