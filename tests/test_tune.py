"""`movie-genre tune` with real worker processes and real databases: an SQLite file, and a PostgreSQL server started here."""
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from movie_genre.demo import make_demo
from movie_genre.runs import finished_folds
from movie_genre.tune import load_study, prepare, tune_worker

BIN = Path(sys.executable).parent
TINY = ('-p', 'epochs', '1', '-p', 'image_size', '32', '-p', 'folds', '3', '-p', 'threads', '1')


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    "A small demo set and a poster cache of its own."
    tmp = tmp_path_factory.mktemp('tune')
    patch = pytest.MonkeyPatch()
    patch.setenv('MOVIE_GENRE_CACHE', str(tmp / 'cache'))
    yield make_demo(tmp / 'data', n_train=90, n_test=8)
    patch.undo()


def tune(tmp, data, *args, wait=True):
    "`movie-genre tune` in its own process, on `data`, runs and reports under `tmp`."
    env = {k: v for k, v in os.environ.items() if k != 'IN_TEST'}
    command = [BIN / 'movie-genre', 'tune', *map(str, args), '-p', 'data_dir', data, '-p', 'runs_dir', tmp / 'runs',
               '-p', 'reports_dir', tmp / 'reports']
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if not wait: return proc
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


def wait_for(path: Path, proc, seconds=180):
    "Wait until `path` exists (a worker got that far); fail if the worker ended first."
    end = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, f'the worker ended before {path} appeared:\n{proc.stdout.read()[-3000:]}'
        assert time.time() < end, f'no {path} after {seconds} s'
        time.sleep(0.1)


def _find(program: str) -> str | None:
    return shutil.which(program) or next((str(p) for p in sorted(Path('/usr/lib/postgresql').glob(f'*/bin/{program}'))), None)


@pytest.fixture
def postgres_url():
    "A PostgreSQL server of its own in a temporary folder on 127.0.0.1, stopped afterwards; the test skips, saying why, where none can be had."
    pytest.importorskip('psycopg', reason='the PostgreSQL driver psycopg is not installed (pip install "psycopg[binary]")')
    initdb, pg_ctl = _find('initdb'), _find('pg_ctl')
    if not (initdb and pg_ctl): pytest.skip('PostgreSQL is not installed (no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin); '
                                            ".ci/run installs Debian's postgresql")
    as_user = []
    if os.geteuid() == 0:  # initdb refuses root
        try: pwd.getpwnam('postgres')
        except KeyError: pytest.skip('running as root and there is no postgres user to run the server as')
        as_user = ['runuser', '-u', 'postgres', '--']
    folder = Path(tempfile.mkdtemp(prefix='movie-genre-pg-'))
    if as_user: shutil.chown(folder, 'postgres', 'postgres')
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    data = folder / 'data'
    def run(*command): return subprocess.run([*as_user, *map(str, command)], capture_output=True, text=True, timeout=120)
    try:
        steps = [(initdb, '-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync'),
                 (pg_ctl, '-D', data, '-l', folder / 'server.log', '-w', '-o', f'-p {port} -k {folder} -c listen_addresses=127.0.0.1', 'start')]
        for step in steps:
            r = run(*step)
            if r.returncode: pytest.skip(f'could not start a PostgreSQL server ({Path(step[0]).name}: {(r.stderr or r.stdout).strip()[-300:]})')
        yield f'postgresql://postgres@127.0.0.1:{port}/postgres'
    finally:
        if (data / 'postmaster.pid').exists(): run(pg_ctl, '-D', data, '-m', 'immediate', '-w', 'stop')
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize('database', ['sqlite', 'postgresql'])
def test_two_workers_share_one_study(demo, tmp_path, database, request):
    "Two worker processes started together on one study: distinct trials, every trial's run folder, the report; then its best recipe on a fold."
    storage = f'sqlite:///{tmp_path}/runs/two.db' if database == 'sqlite' else request.getfixturevalue('postgres_url')
    tmp = tmp_path
    workers = [tune(tmp, demo, '--study', 'two', '--storage', storage, '--n-trials', 1, *TINY, wait=False) for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], '\n'.join(o[-3000:] for o in outputs)
    trials = load_study('two', storage).get_trials()
    assert sorted(t.number for t in trials) == [0, 1] and all(t.state.name == 'COMPLETE' for t in trials)
    assert len({t.user_attrs['pid'] for t in trials}) == 2  # both workers did trials
    for t in trials: assert finished_folds(tmp / 'runs' / f'two-t{t.number}') == [1, 2]
    code, out = tune(tmp, demo, '--study', 'two', '--storage', storage, '--report')
    assert code == 0, out
    report = (tmp / 'reports' / 'studies' / 'two' / 'report.md').read_text()
    assert 'not the 8-fold estimate' in report and (tmp / 'reports' / 'studies' / 'two' / 'history.png').is_file()
    assert (tmp / 'reports' / 'studies' / 'two' / 'importances.png').is_file() and len((tmp / 'reports' / 'studies' / 'two' / 'trials.csv').read_text().splitlines()) == 3
    if database == 'postgresql': return
    best = load_study('two', storage).best_trial
    env = {k: v for k, v in os.environ.items() if k != 'IN_TEST'}
    r = subprocess.run([BIN / 'movie-genre', 'train', '--from-study', 'two', '--storage', storage, '--run-name', 'best', '--folds', '1',
                        '-p', 'runs_dir', tmp / 'runs', '-p', 'threads', '1'], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f'the recipe of trial {best.number} of study two' in r.stdout
    config = json.loads((tmp / 'runs' / 'best' / 'fold1' / 'config.json').read_text())
    assert {k: config[k] for k in best.params} == best.params and config['epochs'] == 1 and config['image_size'] == 32


def test_a_killed_worker_leaves_a_trial_that_another_worker_retries_and_resumes(demo, tmp_path):
    "kill -9 mid-trial: the heartbeat fails the trial, the next worker retries it in the same run folder and finishes it."
    tmp = tmp_path
    args = ('--study', 'k', '--heartbeat', 1, '--n-trials', 1, *TINY, '-p', 'epochs', 3)
    first = tune(tmp, demo, *args, wait=False)
    wait_for(tmp / 'runs' / 'k-t0' / 'fold1' / 'last.pt', first)  # an epoch done and checkpointed
    first.kill(); first.wait()
    time.sleep(4)  # past the grace period: three heartbeats
    code, out = tune(tmp, demo, *args)
    assert code == 0, out[-3000:]
    trials = load_study('k', f'sqlite:///{tmp}/runs/k.db').get_trials()
    assert [t.state.name for t in trials] == ['FAIL', 'COMPLETE']
    assert trials[1].system_attrs['failed_trial'] == 0 and trials[1].params == trials[0].params
    assert trials[1].user_attrs['run_name'] == 'k-t0' and not (tmp / 'runs' / 'k-t1').exists()
    assert 'resuming fold 1 of k-t0' in out or 'fold 1 of k-t0 is finished' in out
    assert finished_folds(tmp / 'runs' / 'k-t0') == [1, 2]


def test_sigterm_stops_a_worker_within_seconds_and_queues_its_trial_again(demo, tmp_path):
    tmp = tmp_path
    worker = tune(tmp, demo, '--study', 't', '--n-trials', 1, *TINY, '-p', 'epochs', 20, wait=False)
    wait_for(tmp / 'runs' / 't-t0' / 'fold1' / 'last.pt', worker)
    worker.send_signal(signal.SIGTERM)
    start = time.time()
    out, _ = worker.communicate(timeout=60)
    assert time.time() - start < 15 and worker.returncode == 143, out[-2000:]  # 128 + SIGTERM, as `movie-genre train`
    trials = load_study('t', f'sqlite:///{tmp}/runs/t.db').get_trials()
    assert [t.state.name for t in trials] == ['FAIL', 'WAITING'] and trials[1].system_attrs['failed_trial'] == 0
    assert trials[1].user_attrs['run_name'] == 't-t0' and (tmp / 'runs' / 't-t0' / 'fold1' / 'last.pt').is_file()


def test_a_bad_recipe_fails_its_trial_before_training_and_the_study_goes_on(demo, tmp_path):
    fixed = dict(data_dir=str(demo), runs_dir=str(tmp_path / 'runs'), epochs=1, image_size=32, folds=3, threads=1)
    study, _ = prepare('bad', fixed=fixed)
    study.enqueue_trial({'dropout': 1.5})  # outside its range: Optuna warns and uses it, TrainConfig refuses it
    with pytest.warns(UserWarning, match='out of range'): tune_worker('bad', n_trials=2, fixed=fixed)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ['FAIL', 'COMPLETE']
    assert trials[0].user_attrs['error'] == 'ValueError: invalid recipe, not trained: dropout must be in [0, 1), not 1.5'
    assert not (tmp_path / 'runs' / 'bad-t0').exists() and finished_folds(tmp_path / 'runs' / 'bad-t1') == [1, 2]


def test_a_worker_with_another_protocol_is_refused(demo, tmp_path):
    fixed = dict(data_dir=str(demo), runs_dir=str(tmp_path / 'runs'), epochs=1)
    prepare('p', fixed=fixed)
    with pytest.raises(ValueError, match=r"fixed: the study has \{'epochs': 1, 'metric': 'macro'\}, this worker \{'epochs': 2, 'metric': 'macro'\}"):
        prepare('p', fixed={**fixed, 'epochs': 2})
    other = Path(shutil.copytree(demo, tmp_path / 'other-data'))  # other labels: scores not comparable with the study's
    (other / 'train.csv').write_text((other / 'train.csv').read_text().replace('Drama', 'Comedy', 1))
    with pytest.raises(ValueError, match=r'data: the study has'): prepare('p', fixed={**fixed, 'data_dir': str(other)})
    with pytest.raises(ValueError, match='two folds or more'): prepare('p', folds=[1], fixed=fixed)
    with pytest.raises(ValueError, match=r'fold must be in 1\.\.3'): prepare('p', folds=[1, 4], fixed={**fixed, 'folds': 3})


def test_sigterm_to_a_gpus_parent_alone_stops_its_workers_and_queues_their_trials(demo, tmp_path):
    "`tune --gpus 0,1` (GPU check waived: CPU workers here) stopped the way a scheduler stops it: the workers with it, within seconds."
    import psutil
    tmp, env = tmp_path, {k: v for k, v in os.environ.items() if k != 'IN_TEST'}
    code = 'import sys, movie_genre.cli as cli; cli.check_gpus = lambda gpus: gpus; cli.main(sys.argv[1:])'
    command = [sys.executable, '-c', code, 'tune', '--study', 'g', '--n-trials', '1', '--gpus', '0,1', *TINY, '-p', 'epochs', '20',
               '-p', 'data_dir', demo, '-p', 'runs_dir', tmp / 'runs', '-p', 'reports_dir', tmp / 'reports']
    parent = subprocess.Popen(list(map(str, command)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wait_for(tmp / 'runs' / 'g-t0' / 'fold1' / 'last.pt', parent)
    workers = psutil.Process(parent.pid).children(recursive=True)
    assert len(workers) >= 2
    parent.send_signal(signal.SIGTERM)
    start = time.time()
    out, _ = parent.communicate(timeout=60)
    assert time.time() - start < 15 and parent.returncode == 143, out[-2000:]
    gone, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, f'workers left running: {alive}'
    states = [t.state.name for t in load_study('g', f'sqlite:///{tmp}/runs/g.db').get_trials()]
    assert 'RUNNING' not in states and 'WAITING' in states, states  # interrupted trials are queued again for the next worker


def test_an_unreachable_database_is_the_users_error_in_one_line(capsys):
    "A study database that cannot be reached (no server, a wrong port or password) is said in one line, not as a bug's traceback."
    from movie_genre.cli import main
    with pytest.raises(SystemExit) as e: main(['tune', '--study', 'x', '--storage', 'postgresql://me@127.0.0.1:1/none', '--report'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and 'cannot open the study database postgresql://me@127.0.0.1:1/none' in err and 'Traceback' not in err, err
