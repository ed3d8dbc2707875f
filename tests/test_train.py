"""Training behaviour on the demo data: the run folder, resume after a kill, clean folds, fresh models, safe checkpoints."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from movie_genre.data import load_split
from movie_genre.demo import make_demo
from movie_genre.checkpoints import CheckpointError, load_checkpoint
from movie_genre.train import TrainConfig, fold_datasets, train_fold, make_loader
from movie_genre.runs import FoldBusy
from movie_genre.runs import load_or_make_folds

ROOT = Path(__file__).resolve().parents[1]
TIMING_COLUMNS = ['seconds', 'images_per_s']


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp('data') / 'demo', n_train=160, n_test=24)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv('MOVIE_GENRE_CACHE', str(tmp_path_factory.getbasetemp() / 'cache'))


def tiny(demo, runs, **kw):
    return TrainConfig(**{'data_dir': str(demo), 'runs_dir': str(runs), 'run_name': 'r', 'folds': 4, 'epochs': 3,
                          'image_size': 32, 'batch_size': 32, 'width': 16, **kw})


def summary(cfg):
    return pd.read_csv(cfg.fold_dir / 'summary.csv').drop(columns=TIMING_COLUMNS)


def test_fold_writes_every_file_quickly(demo, tmp_path):
    cfg = tiny(demo, tmp_path)
    start = time.time()
    result = train_fold(cfg)
    assert time.time() - start < 120
    names = {'config.json', 'summary.csv', 'model.pt', 'last.pt', 'oof.csv', 'test_probs.csv'}
    assert names <= {p.name for p in cfg.fold_dir.iterdir()}
    assert (tmp_path / 'r' / 'folds.csv').exists()
    assert json.loads((cfg.fold_dir / 'config.json').read_text())['fold'] == 1
    rows = summary(cfg)
    assert len(rows) == 3 and {'train_loss', 'valid_loss', 'f1_micro', 'f1_macro', 'f1_samples', 'lr'} <= set(rows.columns)
    oof, folds = pd.read_csv(cfg.fold_dir / 'oof.csv'), pd.read_csv(tmp_path / 'r' / 'folds.csv')
    assert sorted(oof['id']) == sorted(folds.loc[folds['fold'] == 1, 'id'])
    assert len(pd.read_csv(cfg.fold_dir / 'test_probs.csv')) == 24
    assert result['epoch'] == 3 and not result['optimistic']  # the final epoch predicts, by default
    state = load_checkpoint(cfg.fold_dir / 'model.pt')
    assert state['genres'] == list(oof.columns[1:]) and state['title_shape'] == [15, 50]
    # a finished fold is not retrained
    mtime = (cfg.fold_dir / 'last.pt').stat().st_mtime_ns
    train_fold(cfg)
    assert (cfg.fold_dir / 'last.pt').stat().st_mtime_ns == mtime


def test_a_small_model_learns_the_demo_set_far_above_chance(tmp_path):
    "The demo set carries real signal: a minute of CPU training gets far above what the genre priors alone give."
    from movie_genre.metrics import f1_scores, decode
    demo = make_demo(tmp_path / 'demo', n_train=400, n_test=8)
    cfg = tiny(demo, tmp_path / 'runs', folds=4, epochs=8, image_size=48)
    result = train_fold(cfg)
    labels = load_split(demo, image_size=48).labels
    prior_only = f1_scores(labels, decode(labels.mean(0)[None].repeat(len(labels), 0), labels.mean(0)))
    assert result['f1_macro'] > 0.55 and result['f1_macro'] > prior_only['macro'] + 0.25, (result, prior_only)


def interrupt(cfg: TrainConfig, after_epochs: int = 2) -> int:
    "Train `cfg` in another process and kill it (SIGKILL) once `after_epochs` epochs are logged; the epochs done."
    code = (f'from movie_genre.train import TrainConfig, train_fold\n'
            f'train_fold(TrainConfig.from_dict({vars(cfg)!r}))')
    proc = subprocess.Popen([sys.executable, '-c', code], env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = cfg.fold_dir / 'summary.csv'
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(pd.read_csv(log)) >= after_epochs: break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL); proc.wait()
    done = len(pd.read_csv(log))
    assert after_epochs <= done < cfg.epochs, f'the kill came too late ({done} epochs done)'
    return done


@pytest.mark.parametrize('amp_dtype', ['auto', 'fp16'])  # fp16: the loss scaler's state must survive the kill too
def test_kill_and_resume_matches_an_uninterrupted_run(demo, tmp_path, amp_dtype):
    whole = tiny(demo, tmp_path / 'whole', epochs=5, amp_dtype=amp_dtype)
    train_fold(whole)
    broken = tiny(demo, tmp_path / 'broken', epochs=5, amp_dtype=amp_dtype)
    interrupt(broken)
    train_fold(broken)
    pd.testing.assert_frame_equal(summary(broken), summary(whole))
    pd.testing.assert_frame_equal(pd.read_csv(broken.fold_dir / 'oof.csv'), pd.read_csv(whole.fold_dir / 'oof.csv'))
    if amp_dtype == 'fp16': assert load_checkpoint(broken.fold_dir / 'last.pt')['scaler']['scale'] > 0


def test_a_resume_refuses_settings_that_change_what_is_learnt(demo, tmp_path, capsys):
    cfg = tiny(demo, tmp_path, epochs=6)
    interrupt(cfg)
    with pytest.raises(ValueError, match=r"image_size 48 \(was 32\), epochs 4 \(was 6\)"):
        train_fold(TrainConfig.from_dict({**vars(cfg), 'epochs': 4, 'image_size': 48}))
    assert json.loads((cfg.fold_dir / 'config.json').read_text())['epochs'] == 6  # nothing was rewritten
    from movie_genre.data import project_root
    from movie_genre.train import config_changes
    as_papermill_wrote_it = {**vars(cfg), 'data_dir': os.path.relpath(cfg.data_dir, project_root())}  # a relative path
    assert config_changes(as_papermill_wrote_it, cfg) == {}  # the same folder: not a change
    train_fold(TrainConfig.from_dict({**vars(cfg), 'num_workers': 1}))  # where and how fast may change
    assert 'with num_workers 1 (was -1)' in capsys.readouterr().out and len(summary(cfg)) == 6


def test_a_damaged_last_checkpoint_says_what_to_do(demo, tmp_path):
    cfg = tiny(demo, tmp_path, epochs=5)
    interrupt(cfg)
    last = cfg.fold_dir / 'last.pt'
    last.write_bytes(last.read_bytes()[:1000])  # a full disk
    with pytest.raises(CheckpointError, match=f'{last} is damaged.*overwrite=True'):
        train_fold(cfg)
    train_fold(TrainConfig.from_dict({**vars(cfg), 'overwrite': True}))
    assert len(summary(cfg)) == 5


def test_a_second_training_of_a_fold_stops_at_once(demo, tmp_path):
    cfg = tiny(demo, tmp_path, epochs=30)
    code = (f'from movie_genre.runs import fold_lock; import time\n'
            f'with fold_lock({str(cfg.fold_dir)!r}): print("locked", flush=True); time.sleep(60)')
    holder = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == 'locked'
    start = time.time()
    with pytest.raises(FoldBusy, match=f'pid {holder.pid}'): train_fold(cfg)
    assert time.time() - start < 5
    holder.kill(); holder.wait()


def test_validation_ids_never_in_training_batches(demo, tmp_path):
    cfg = tiny(demo, tmp_path, fold=2)
    data = load_split(cfg.data_dir, image_size=32)
    folds = load_or_make_folds(tmp_path / 'folds.csv', data, cfg.folds, cfg.fold_seed)
    train_ds, valid_ds = fold_datasets(cfg, data, folds)
    seen = torch.cat([b['id'] for b in make_loader(train_ds, 16, shuffle=True)]).tolist()
    valid = set(folds.loc[folds['fold'] == 2, 'id'])
    assert seen and not set(seen) & valid
    assert set(seen) | valid == set(data.ids.tolist())
    assert sorted(torch.cat([b['id'] for b in make_loader(valid_ds, 16)]).tolist()) == sorted(valid)


def test_every_fold_starts_from_a_fresh_model(demo, tmp_path):
    "Fold 2 trained after fold 1 in the same process ends exactly as fold 2 trained alone."
    train_fold(tiny(demo, tmp_path / 'a', fold=1, epochs=2))
    after = tiny(demo, tmp_path / 'a', fold=2, epochs=2)
    train_fold(after)
    alone = tiny(demo, tmp_path / 'b', fold=2, epochs=2)
    train_fold(alone)
    pd.testing.assert_frame_equal(summary(after), summary(alone))


def test_unknown_or_mistyped_parameter_fails():
    with pytest.raises(TypeError, match='fodl'): TrainConfig.from_dict({'fodl': 8})
    with pytest.raises(TypeError, match='epochs'): TrainConfig.from_dict({'epochs': 'ten'})


def test_pickled_checkpoint_is_refused(tmp_path):
    class Payload:
        def __reduce__(self): return (os.system, ('echo pwned',))
    torch.save({'weights': Payload()}, tmp_path / 'evil.pt')
    with pytest.raises(ValueError, match='pickled'): load_checkpoint(tmp_path / 'evil.pt')


def test_nan_loss_stops_with_a_clear_message(demo, tmp_path):
    with pytest.raises(FloatingPointError, match='last good epoch'):
        train_fold(tiny(demo, tmp_path, lr=1e30, epochs=2, optimizer='adam', weight_decay=0.0))


def test_the_final_epoch_predicts_unless_asked_otherwise(demo, tmp_path):
    "By default no choice looks at the validation movies: model.pt holds the last epoch, and oof.csv is predicted from it."
    cfg = tiny(demo, tmp_path, epochs=4)
    result = train_fold(cfg)
    model, last = load_checkpoint(cfg.fold_dir / 'model.pt'), load_checkpoint(cfg.fold_dir / 'last.pt')
    assert model['epoch'] == 3 and all(torch.equal(model['weights'][k], last['weights'][k]) for k in last['weights'])
    assert result['epoch'] == 4 and not result['optimistic'] and len(summary(cfg)) == 4  # no early stop either
    best = tiny(demo, tmp_path, run_name='best', epochs=4, select='best')
    result = train_fold(best)
    rows = summary(best)
    assert result['optimistic'] and result['epoch'] == rows.loc[rows['f1_macro'].idxmax(), 'epoch']
    assert load_checkpoint(best.fold_dir / 'model.pt')['epoch'] == result['epoch'] - 1
    from movie_genre.cli import fold_table
    patient = tiny(demo, tmp_path, run_name='patient', epochs=3, patience=10)  # patience that never fires chooses nothing
    assert not train_fold(patient)['optimistic'] and fold_table('patient', [1], patient.runs_dir).loc[1, 'weights'] == 'last epoch'
    assert fold_table('best', [1], best.runs_dir).loc[1, 'weights'] == 'best epoch (optimistic)'
    cut = tiny(demo, tmp_path, run_name='cut', epochs=4)
    interrupt(cut)  # stopped by a crash, not by early stopping
    assert fold_table('cut', [1], cut.runs_dir).loc[1, 'weights'] == 'unfinished'


def test_a_resume_in_another_precision_continues_and_keeps_each_stretch(demo, tmp_path):
    "Started in fp32, resumed where the precision is fp16 (a GPU without bf16): the empty scaler state is not loaded, and environment.json keeps both stretches."
    cfg = tiny(demo, tmp_path, epochs=4, amp=False)
    interrupt(cfg)
    done = load_checkpoint(cfg.fold_dir / 'last.pt')['epoch'] + 1  # (the kill may fall between an epoch's summary row and its last.pt)
    resumed = TrainConfig.from_dict({**vars(cfg), 'amp': True, 'amp_dtype': 'fp16', 'threads': 1})
    assert train_fold(resumed)['epoch'] == 4
    assert load_checkpoint(cfg.fold_dir / 'last.pt')['scaler']['scale'] > 0  # the fp16 stretch scaled its loss
    env = json.loads((cfg.fold_dir / 'environment.json').read_text())
    assert [(s['from_epoch'], s['to_epoch'], s['settings']['amp'], s['autocast']) for s in env['stretches']] == [
        (1, done, False, 'None'), (done + 1, 4, True, 'float16')]
    assert env['autocast'] == 'float16' and env['threads'] == 1  # the top level: how the fold runs now
    assert TrainConfig.from_dict(json.loads((cfg.fold_dir / 'config.json').read_text())) == resumed  # readers of config.json still work


def test_probing_a_fold_lock_never_takes_it_nor_fails(tmp_path):
    "`lock_holder` asked in a tight loop while another process takes and releases the lock as fast as it can: no FoldBusy there, no error here."
    from movie_genre.runs import lock_holder
    fold_dir = tmp_path / 'fold1'
    code = (f'import time\nfrom movie_genre.runs import FoldBusy, fold_lock\ntaken = busy = 0\nprint("ready", flush=True)\n'
            f'end = time.time() + 3\nwhile time.time() < end:\n    try:\n        with fold_lock({str(fold_dir)!r}): taken += 1\n'
            f'    except FoldBusy: busy += 1\nprint(taken, busy)')
    holder = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == 'ready'
    answers = []
    while holder.poll() is None: answers.append(lock_holder(fold_dir))  # an exception here fails the test
    taken, busy = map(int, holder.stdout.read().split())
    assert busy == 0 and taken > 100 and len(answers) > 100
    assert {a.split(' on ')[0] for a in answers if a} == {f'pid {holder.pid}'} and None in answers


def test_a_killed_holder_on_another_machine_leaves_its_fold_free(tmp_path, monkeypatch):
    "A holder on another machine sharing the folder (SIGKILLed by Slurm, its node gone) leaves fold.lock.owner behind: once unrefreshed, the probe stops naming it."
    from movie_genre import runs
    fold_dir = tmp_path / 'fold1'
    fold_dir.mkdir()
    owner = fold_dir / 'fold.lock.owner'
    owner.write_text(json.dumps(dict(pid=1, host='elsewhere', since='2024-01-01 12:00:00')))
    assert runs.lock_holder(fold_dir) == 'pid 1 on elsewhere since 2024-01-01 12:00:00'  # fresh: trusted
    os.utime(owner, (time.time() - 86400, time.time() - 86400))
    assert runs.lock_holder(fold_dir) is None  # a day without a sign of life: the driver trains the fold again
    monkeypatch.setattr(runs, 'OWNER_STALE_S', 0.5)  # a live holder keeps its file fresh (every OWNER_STALE_S / 10)
    with runs.fold_lock(fold_dir):
        time.sleep(1)
        assert time.time() - owner.stat().st_mtime < 0.5 and runs.lock_holder(fold_dir).startswith(f'pid {os.getpid()} ')


def test_the_driver_refuses_bad_data_or_settings_before_a_fold_starts(demo, tmp_path, capsys):
    "A missing train.csv, a damaged last.pt, a new fold unlike the run's others: the fold fails at once, with no process and no log."
    from dataclasses import asdict
    from movie_genre.cli import train_folds
    runs = tmp_path / 'runs'
    table = train_folds({'run_name': 'r', 'data_dir': str(tmp_path / 'nothing'), 'runs_dir': str(runs)}, [1])
    assert table.loc[1, 'status'] == 'failed' and 'fold 1 FAILED: FileNotFoundError: no ' in capsys.readouterr().out
    assert not (runs / 'r').exists()  # no logs/attempt-1.*: `movie-genre runs` has no half-started run to list
    fold1 = tiny(demo, runs, epochs=1)
    fold1.fold_dir.mkdir(parents=True)
    (fold1.fold_dir / 'config.json').write_text(json.dumps(asdict(fold1)))  # the run's settings, as fold 1 records them when it starts
    (runs / 'r' / 'fold3').mkdir()
    (runs / 'r' / 'fold3' / 'last.pt').write_bytes(b'half a checkpoint')
    table = train_folds({'run_name': 'r', 'runs_dir': str(runs), 'image_size': 48}, [2, 3])  # the rest comes from the run's fold 1
    out = capsys.readouterr().out
    assert (table['status'] == 'failed').all() and 'fold3/last.pt is damaged' in out
    refusal = next(line for line in out.splitlines() if line.startswith('fold 2 FAILED'))
    assert 'image_size 48 (was 32)' in refusal and 'epochs' not in refusal and 'data_dir' not in refusal and 'new run name' in refusal
    assert not any((runs / 'r' / f'fold{k}' / 'logs').exists() for k in (2, 3))
    with pytest.raises(ValueError, match=r'epochs 12 \(was 1\)'):  # papermill's way: the notebook's defaults, asked for directly
        train_fold(TrainConfig.from_dict({**vars(fold1), 'fold': 2, 'epochs': 12}))
    # retraining one fold afresh with other settings would mix two recipes too; retraining every fold together may change them
    table = train_folds({'run_name': 'r', 'runs_dir': str(runs), 'image_size': 48, 'overwrite': True}, [2])
    assert table.loc[2, 'status'] == 'failed' and 'image_size 48 (was 32)' in capsys.readouterr().out
    from movie_genre.train import check_fold
    check_fold(TrainConfig.from_dict({**vars(fold1), 'fold': 2, 'image_size': 48, 'overwrite': True}), retrained=[1, 2, 3])
