"""Evaluation and submission of real runs on the demo data: runs that skipped bad rows."""
import shutil

import numpy as np
import pandas as pd
import pytest

from movie_genre.demo import make_demo
from movie_genre.evaluate import evaluate_run, make_submission, validate_submission
from movie_genre.train import TrainConfig, train_fold


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('MOVIE_GENRE_CACHE', str(tmp_path / 'cache'))


def test_a_run_that_skipped_bad_rows_is_evaluated_and_submitted(tmp_path, capsys):
    data = make_demo(tmp_path / 'data', n_train=64, n_test=12)
    train = pd.read_csv(data / 'train.csv')
    train.loc[3, 'genres'] = "['Drama', "  # malformed: skipped
    train.to_csv(data / 'train.csv', index=False)
    test = pd.read_csv(data / 'test.csv')
    bad_test = test['id'][2]
    (data / 'test' / f'{bad_test}.jpg').write_bytes(b'not a poster')  # unreadable: skipped
    for k in (1, 2):
        train_fold(TrainConfig(data_dir=str(data), runs_dir=str(tmp_path / 'runs'), run_name='s', folds=2, fold=k, epochs=1,
                               image_size=32, on_bad='skip'))
    ev = evaluate_run('s', tmp_path / 'runs', reports_dir=tmp_path / 'reports')
    assert len(ev.run.ids) == 63 and train['id'][3] not in ev.run.ids and ev.run.skipped_test == [bad_test]
    out = make_submission('s', out=tmp_path / 'sub.csv', runs_dir=tmp_path / 'runs')
    sub, sample = pd.read_csv(out), pd.read_csv(data / 'sample_submission.csv')
    validate_submission(sub, sample)
    assert bad_test in sub['id'].tolist() and 'skipped as bad rows' in capsys.readouterr().out
