"""The `movie-genre` command as a user meets it: paths from where they stand, errors in one line, nothing lost."""
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from movie_genre.cli import quickstart
from movie_genre.demo import make_demo
from movie_genre.evaluate import EvaluateConfig
from movie_genre.train import TrainConfig, train_fold

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A tiny demo set and a run of two finished folds (of three), in a temporary folder."
    tmp = tmp_path_factory.mktemp('cli')
    env = {**{k: v for k, v in os.environ.items() if k != 'IN_TEST'}, 'MOVIE_GENRE_CACHE': str(tmp / 'cache')}
    patch = pytest.MonkeyPatch()
    patch.setenv('MOVIE_GENRE_CACHE', env['MOVIE_GENRE_CACHE'])
    data = make_demo(tmp / 'data', n_train=72, n_test=12)
    for k in (1, 2):
        train_fold(TrainConfig(data_dir=str(data), runs_dir=str(tmp / 'runs'), run_name='c', folds=3, fold=k, epochs=1, image_size=32))
    yield tmp, data, env
    patch.undo()


def cli(*args, cwd=ROOT, env=None):
    return subprocess.run([BIN / 'movie-genre', *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env)


def test_python_m_runs_the_command_line_and_importing_it_runs_nothing(tmp_path):
    "`python -m movie_genre.cli` is the command where no console script is installed; a notebook importing it runs nothing."
    r = subprocess.run([sys.executable, '-m', 'movie_genre.cli', 'runs', '--runs-dir', tmp_path], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    code = "import runpy, sys; sys.argv = ['kernel', '--nonsense']; get_ipython = None; runpy.run_module('movie_genre.cli', {'get_ipython': get_ipython}, '__main__'); print('ok')"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)  # a kernel is named '__main__' too
    assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr


def test_demo_refuses_a_folder_that_holds_data(tmp_path):
    (tmp_path / 'kaggle').mkdir()
    (tmp_path / 'kaggle' / 'train.csv').write_text('id,path\n1,x\n')
    r = cli('demo', 'kaggle', '--n-train', 8, '--n-test', 2, cwd=tmp_path)  # relative to where the user stands
    assert r.returncode == 2 and 'is not empty' in r.stderr and '--force' in r.stderr and 'Traceback' not in r.stderr
    assert (tmp_path / 'kaggle' / 'train.csv').read_text() == 'id,path\n1,x\n'
    assert cli('demo', 'kaggle', '--n-train', 8, '--n-test', 2, '--force', cwd=tmp_path).returncode == 0
    assert len(pd.read_csv(tmp_path / 'kaggle' / 'train.csv')) == 8


def test_evaluate_of_a_missing_run_is_one_line_and_creates_nothing(run, tmp_path):
    tmp, _, env = run
    r = cli('evaluate', '--run-name', 'nosuch', '-p', 'runs_dir', tmp / 'runs', '-p', 'reports_dir', tmp_path / 'reports', env=env)
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and "'nosuch' has no finished fold" in r.stderr and 'c' in r.stderr
    assert not (tmp_path / 'reports').exists()


def test_evaluate_parameters_are_typed_and_checked(run, tmp_path):
    tmp, _, env = run
    assert EvaluateConfig.from_command_line([('measure_tta', 'False'), ('data_dir', 'None')]) == {'measure_tta': False, 'data_dir': None}
    bad = cli('evaluate', '--run-name', 'c', '-p', 'metrc', 'micro', env=env)
    assert bad.returncode == 2 and "unknown parameter(s) ['metrc']" in bad.stderr
    r = cli('evaluate', '--run-name', 'c', '-p', 'runs_dir', tmp / 'runs', '-p', 'reports_dir', tmp_path / 'reports',
            '-p', 'measure_tta', 'False', '-p', 'metric', 'micro', env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'tuned, cross-fitted' in r.stdout and 'report:' in r.stdout  # the scores on the console, not only a path
    report = (tmp_path / 'reports' / 'c' / 'report.md').read_text()
    assert 'not measured' in report and '**micro F1**' in report
    assert (tmp_path / 'reports' / 'c' / 'fold_scores.csv').is_file() and not (tmp_path / 'reports' / 'c' / 'folds.csv').exists()


def test_submit_and_predict_write_where_the_user_stands(run, tmp_path):
    tmp, data, env = run
    here = tmp_path / 'here'
    here.mkdir()
    r = cli('submit', '--run-name', 'c', '--runs-dir', tmp / 'runs', '--out', 'sub.csv', '--metric', 'micro', cwd=here, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (here / 'sub.csv').is_file() and 'tuned for micro F1' in r.stdout
    poster = here / 'love_heart.jpg'
    shutil.copy(data / 'test' / f'{pd.read_csv(data / "test.csv").id[0]}.jpg', poster)
    r = cli('predict', '--run-name', 'c', '--runs-dir', tmp / 'runs', 'love_heart.jpg', '--out', 'pred.csv', cwd=here, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    table = pd.read_csv(here / 'pred.csv')
    assert table.title[0] == 'love heart' and 'the file name' in table.notes[0]  # the title from the file name, as a folder's
    r = cli('predict', '--run-name', 'c', '--runs-dir', tmp / 'runs', 'love_heart.jpg', '--explain', cwd=here, env=env)
    assert r.returncode == 0 and 'Grad-CAM maps:' in r.stdout, r.stderr[-2000:]
    assert (here / 'love_heart.gradcam.png').stat().st_size > 5000
    (data / 'word_vectors.txt').rename(tmp_path / 'away.txt')  # the demo set's vectors, which predict finds by itself
    try:
        r = cli('predict', '--run-name', 'c', '--runs-dir', tmp / 'runs', 'love_heart.jpg', '--title', 'Love', cwd=here, env=env)
    finally: (tmp_path / 'away.txt').rename(data / 'word_vectors.txt')
    assert r.returncode == 2 and '--vectors' in r.stderr and '--no-title' in r.stderr and 'vectors=' not in r.stderr


def test_quickstart_refuses_a_run_made_for_other_data(run, tmp_path, capsys):
    tmp, data, _ = run
    other = make_demo(tmp_path / 'other', n_train=40, n_test=8, seed=1)
    with pytest.raises(ValueError, match='trained on other data'):
        quickstart('c', data_dir=other, runs_dir=tmp / 'runs', reports_dir=tmp_path / 'reports')
    assert not (tmp_path / 'reports').exists() and 'training' not in capsys.readouterr().out  # nothing ran
    assert json.loads((tmp / 'runs' / 'c' / 'fold1' / 'config.json').read_text())['data_dir'] == str(data)


def test_help_lists_the_parameters():
    for command, names in (('train', ('batch_size', 'num_workers', 'which fold to validate on')),
                           ('evaluate', ('metric', 'measure_tta')), ('demo', ('--force', 'default: 600')),
                           ('quickstart', ('trains fold 1',))):
        out = cli(command, '--help').stdout
        assert all(name in out for name in names), (command, out)


def test_compare_and_runs(tmp_path):
    from movie_genre.data import load_split
    from movie_genre.demo import make_fake_run
    env = {**{k: v for k, v in os.environ.items() if k != 'IN_TEST'}, 'MOVIE_GENRE_CACHE': str(tmp_path / 'cache')}
    data_dir = make_demo(tmp_path / 'data', n_train=60, n_test=8)
    os.environ['MOVIE_GENRE_CACHE'] = env['MOVIE_GENRE_CACHE']
    try: data, test = load_split(data_dir, 'train', image_size=32), load_split(data_dir, 'test', image_size=32)
    finally: del os.environ['MOVIE_GENRE_CACHE']
    for name, extra in (('one', {}), ('two', {'width': 48}), ('elsewhere', {'fold_seed': 7})):
        make_fake_run(data, test, name, tmp_path / 'runs', data_dir, folds=(1, 2, 3), seed=len(name), arch='resnet', **extra)
    r = cli('compare', 'one', 'two', 'one,two', '--runs-dir', 'runs', '--out', 'cmp', cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {'comparison.csv', 'genres.csv', 'settings.csv', 'genre_f1.png', 'curves.png', 'comparison.md'} <= {p.name for p in (tmp_path / 'cmp').iterdir()}
    assert list(pd.read_csv(tmp_path / 'cmp' / 'comparison.csv')['run']) == ['one', 'two', 'one+two']
    warned = cli('compare', 'one', 'elsewhere', '--runs-dir', 'runs', '--out', 'cmp2', cwd=tmp_path, env=env)
    assert warned.returncode == 0 and 'another split' in (tmp_path / 'cmp2' / 'comparison.md').read_text()
    listed = cli('runs', '--runs-dir', 'runs', cwd=tmp_path, env=env)
    assert listed.returncode == 0 and all(n in listed.stdout for n in ('one', 'two', 'elsewhere', 'complete'))
    # a comparison that fails in its notebook leaves the last good one as it was
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / 'cmp').iterdir()}
    (tmp_path / 'runs' / 'two' / 'fold1' / 'oof.csv').write_text('id,Drama\n1,"unclosed\n')
    failed = cli('compare', 'one', 'two', '--runs-dir', 'runs', '--out', 'cmp', cwd=tmp_path, env=env)
    assert failed.returncode == 2 and 'damaged' in failed.stderr, failed.stderr[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / 'cmp').iterdir()} == before
    # an unknown run is one message in every command, naming the runs there (not the ensembles folder)
    (tmp_path / 'runs' / 'ensembles').mkdir(exist_ok=True)
    for command in (('evaluate', '--run-name', 'nope', '-p', 'runs_dir', 'runs'), ('submit', '--run-name', 'one,nope', '--runs-dir', 'runs'),
                    ('predict', '--run-name', 'nope', '--runs-dir', 'runs', 'poster.jpg'), ('compare', 'one', 'nope', '--runs-dir', 'runs')):
        r = cli(*command, cwd=tmp_path, env=env)
        assert r.returncode == 2 and f"run 'nope' has no finished fold in {tmp_path / 'runs'} (no such run); the runs there: " in r.stderr, (command, r.stderr)
        assert 'ensembles' not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_quickstart_takes_training_parameters(monkeypatch):
    "`movie-genre quickstart -p epochs 1` trains the demo run with them (the run name stays --run-name)."
    import movie_genre.cli as cli_module
    calls = []
    monkeypatch.setattr(cli_module, 'quickstart', lambda *args, **kwargs: calls.append((args, kwargs)))
    cli_module.main(['quickstart', '--run-name', 'q', '-p', 'epochs', '1', '-p', 'image_size', '32'])
    assert calls == [(('q',), {'params': {'epochs': 1, 'image_size': 32}})]
    with pytest.raises(SystemExit) as e: cli_module.main(['quickstart', '-p', 'run_name', 'x'])
    assert e.value.code == 2


def test_tfidf_refuses_the_network_options_it_would_ignore(tmp_path, capsys):
    "`train --model tfidf --from-study S` (or --gpus) is a usage error naming the option, not a TF-IDF run that silently ignored it."
    from movie_genre.cli import main
    for option in (['--from-study', 'posters8'], ['--gpus', '0'], ['--storage', '']):
        with pytest.raises(SystemExit) as e: main(['train', '--model', 'tfidf', '--run-name', 'tf', *option, '-p', 'runs_dir', str(tmp_path)])
        assert e.value.code == 2 and f'{option[0]}: for the network only' in capsys.readouterr().err
    assert not (tmp_path / 'tf').exists()


def test_network_train_refuses_storage_without_a_study(tmp_path, capsys):
    "`train --storage URL` without `--from-study` is a usage error: the storage only says where a study's recipe is read from."
    from movie_genre.cli import main
    with pytest.raises(SystemExit) as e: main(['train', '--run-name', 'n', '--storage', 'sqlite:///x.db', '-p', 'runs_dir', str(tmp_path)])
    assert e.value.code == 2 and '--storage: the database of --from-study' in capsys.readouterr().err
    assert not (tmp_path / 'n').exists()


def test_train_takes_the_runs_own_folds_and_refuses_p_fold(run, tmp_path):
    "`--folds` defaults to every fold of the run's split; `-p fold` (the notebook's parameter) and folds out of range are errors."
    from movie_genre.cli import folds_to_train
    tmp, data, env = run
    params = {'run_name': 'c', 'runs_dir': str(tmp / 'runs'), 'data_dir': str(data)}
    assert folds_to_train(TrainConfig, params, None) == [1, 2, 3] and params['folds'] == 3  # not 1-8: the split has 3 folds
    assert folds_to_train(TrainConfig, {'run_name': 'new', 'runs_dir': str(tmp / 'runs')}, None) == list(range(1, 9))
    from movie_genre.data import load_split
    from movie_genre.demo import make_fake_run
    make_fake_run(load_split(data, 'train', image_size=32), None, 'seed7', tmp / 'runs', data, folds=(1,), fold_seed=7)
    seeded = {'run_name': 'seed7', 'runs_dir': str(tmp / 'runs')}
    assert folds_to_train(TrainConfig, seeded, None) == [1, 2, 3] and seeded['fold_seed'] == 7  # the split as it was made
    r = cli('train', '--run-name', 'c', '-p', 'fold', 2, '-p', 'runs_dir', tmp / 'runs', '-p', 'data_dir', data, env=env)
    assert r.returncode != 0 and '--folds' in r.stderr and 'Traceback' not in r.stderr and 'training' not in r.stdout
    r = cli('train', '--model', 'tfidf', '--run-name', 'tf', '--folds', 4, '-p', 'folds', 3, '-p', 'runs_dir', tmp / 'runs',
            '-p', 'data_dir', data, env=env)
    assert r.returncode != 0 and 'out of range' in r.stderr and not (tmp / 'runs' / 'tf' / 'fold4').exists()


def test_quickstart_on_a_folder_with_files_but_no_train_csv_says_what_to_do(tmp_path):
    "An unpacked download without its train.csv: no demo mixed into it, and no option suggested that quickstart lacks."
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / '2024-dl-final.zip').write_bytes(b'')
    with pytest.raises(FileNotFoundError, match='has no train.csv but holds 2024-dl-final.zip') as error:
        quickstart('qs', data_dir=tmp_path / 'data', runs_dir=tmp_path / 'runs', reports_dir=tmp_path / 'reports')
    assert '--force' not in str(error.value) and sorted(p.name for p in (tmp_path / 'data').iterdir()) == ['2024-dl-final.zip']


def test_help_and_version_import_neither_torch_nor_pandas():
    "`--help` answers at once: argument parsing imports no torch (it took seconds)."
    code = ("import sys\nfrom movie_genre.cli import main\nfor argv in (['--help'], ['train', '--help'], ['--version']):\n"
            "    try: main(argv)\n    except SystemExit: pass\nprint('torch' in sys.modules, 'pandas' in sys.modules)")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.stdout.splitlines()[-1] == 'False False' and 'movie-genre 0.1' in r.stdout and 'batch_size' in r.stdout, r.stdout[-500:]


@pytest.mark.parametrize('error, code, bug', [(ValueError('bad value in row 3'), 2, False), (KeyError('epoch'), 1, True),
                                              (TypeError('unsupported operand'), 1, True), (RuntimeError('boom'), 1, True)])
def test_a_bug_keeps_its_traceback_and_a_user_error_is_one_line(monkeypatch, capsys, error, code, bug):
    import movie_genre.cli as cli_module
    def failing(args, parser): raise error
    monkeypatch.setattr(cli_module, '_run', failing)
    with pytest.raises(SystemExit) as stop: cli_module.main(['runs'])
    err = capsys.readouterr().err
    assert stop.value.code == code and ('Traceback' in err) == bug and ('a bug in movie-genre' in err) == bug, err
    if not bug: assert err.count('\n') == 1 and 'bad value in row 3' in err
    with pytest.raises(type(error)): cli_module.main(['runs', '--debug'])  # --debug: every error with its traceback


def test_the_driver_threads_take_each_fold_once(monkeypatch, tmp_path):
    "Eight GPU slots whose folds end at the same instant, one fold left: it runs once and no worker fails on an empty list."
    import threading
    import movie_genre.cli as cli_module
    ran, crashes = [], []
    def fake_run_fold(fold, params, gpu, children=None):
        ran.append(fold)
        with contextlib.suppress(threading.BrokenBarrierError): together.wait(timeout=0.5)  # the first eight end together
    monkeypatch.setattr(cli_module, '_run_fold', fake_run_fold)
    monkeypatch.setattr(cli_module, '_fold_refusal', lambda fold, params, retrained=(): None)  # no data here: the folds are fakes
    monkeypatch.setattr(threading, 'excepthook', lambda args: crashes.append(args.exc_value))
    def slow_is_set(event):  # widens the gap between "folds are left" and taking one, where a stop flag is read
        time.sleep(0.01)
        return event._flag
    monkeypatch.setattr(threading.Event, 'is_set', slow_is_set)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # and then switch threads as often as they can
    try:
        for attempt in range(3):
            ran.clear()
            together = threading.Barrier(8)
            table = cli_module.train_folds(dict(run_name=f'q{attempt}', runs_dir=str(tmp_path / 'runs'), folds=9), None,
                                           gpus=[str(g) for g in range(8)])
            assert sorted(ran) == list(range(1, 10)) and not crashes, (ran, crashes)
            assert (table['status'] == 'trained').all()
    finally: sys.setswitchinterval(switch)


_COMMAND_WITH_A_CHILD = '''
import os, signal, subprocess, sys, threading, time
from pathlib import Path
import psutil
from movie_genre import cli
# as `nohup movie-genre ...` starts it, or a terminal (whatever the test suite itself was started under: nohup, setsid, CI)
signal.signal(signal.SIGHUP, signal.SIG_IGN if sys.argv[1] == 'nohup' else signal.SIG_DFL)
log, started, real_popen = Path(sys.argv[2]), [], subprocess.Popen
class Popen(real_popen):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        started.append(self.pid)
        if sys.argv[1] == 'while-starting': os.kill(os.getpid(), signal.SIGTERM)  # the signal comes while the child is being started
subprocess.Popen = Popen
def send_when_up(signum):
    while 'up' not in (log.read_text() if log.exists() else ''): time.sleep(0.05)
    os.kill(os.getpid(), signum)
if sys.argv[1] != 'while-starting':
    threading.Thread(target=send_when_up, args=(signal.SIGHUP,), daemon=True).start()
cli._run = lambda args, parser: cli.stream_output([sys.executable, '-c', 'import time; print("up", flush=True); time.sleep(3); print("done")'], log)
try: cli.main(['runs']); print('exit 0', flush=True)
except SystemExit as e: print('exit', e.code, flush=True)
finally: print('child running', psutil.pid_exists(started[0]) and psutil.Process(started[0]).status() != psutil.STATUS_ZOMBIE, flush=True)
'''


@pytest.mark.parametrize('when, code', [('while-starting', 143), ('hangup', 129), ('nohup', 0)])
def test_a_signal_while_a_child_starts_or_a_closed_terminal_stops_the_child(tmp_path, when, code):
    "SIGTERM while the child process is being started stops it (no deadlock on the children's lock, no orphan); SIGHUP (a closed"
    "terminal) stops the children like SIGTERM, since they run in sessions of their own that the terminal's hangup does not reach;"
    "under nohup SIGHUP stays ignored."
    script = tmp_path / 'command.py'
    script.write_text(_COMMAND_WITH_A_CHILD)
    r = subprocess.run([sys.executable, script, when, tmp_path / 'child.log'], capture_output=True, text=True, timeout=20,
                       env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert f'exit {code}' in r.stdout and 'child running False' in r.stdout, (r.returncode, r.stdout, r.stderr[-2000:])
    assert ('done' in (tmp_path / 'child.log').read_text()) == (when == 'nohup')  # stopped at once, or (nohup) not stopped at all
