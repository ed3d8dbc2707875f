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


def test_a_tfidf_run_and_its_ensembles_are_reported_as_honest(tmp_path):
    "A TF-IDF member chooses nothing on its validation movies: no 'optimistic' warning, and no training curve to draw."
    from movie_genre.ensemble import load_any
    from movie_genre.tfidf import TfidfConfig, train_tfidf_fold
    data, runs = make_demo(tmp_path / 'data', n_train=64, n_test=8), tmp_path / 'runs'
    for k in (1, 2):
        train_tfidf_fold(TfidfConfig(data_dir=str(data), runs_dir=str(runs), run_name='t', folds=2, fold=k))
        train_fold(TrainConfig(data_dir=str(data), runs_dir=str(runs), run_name='n', folds=2, fold=k, epochs=1, image_size=32))
        train_fold(TrainConfig(data_dir=str(data), runs_dir=str(runs), run_name='best', folds=2, fold=k, epochs=2, image_size=32,
                               select='best'))
    ev = evaluate_run('t', runs, reports_dir=tmp_path / 'reports', explain=False)
    report = (tmp_path / 'reports' / 't' / 'report.md').read_text()
    assert not ev.run.optimistic and 'optimistic' not in report and 'each fold is fitted once' in report
    assert 'training_curves' not in ev.files and 'Training curves' not in report
    assert not load_any('t,n', runs, verbose=False).optimistic  # the first member's config no longer decides
    assert load_any('t,best', runs, verbose=False).optimistic and load_any('n,best', runs, verbose=False).optimistic
    ensemble = evaluate_run('t,best', runs, reports_dir=tmp_path / 'reports', explain=False)
    assert 'training_curves' not in ensemble.files  # its members' curves are in their own reports, not one crowded figure
    assert '**These scores are optimistic**' in (tmp_path / 'reports' / 't+best' / 'report.md').read_text()


def test_a_one_fold_run_is_reported_as_scored_in_sample(tmp_path, capsys):
    "With one fold no threshold can be cross-fitted: the report and the console say its score is in sample, not honest."
    from movie_genre.cli import evaluate_command
    from movie_genre.tfidf import TfidfConfig, train_tfidf_fold
    data, runs = make_demo(tmp_path / 'data', n_train=48, n_test=6), tmp_path / 'runs'
    train_tfidf_fold(TfidfConfig(data_dir=str(data), runs_dir=str(runs), run_name='one', folds=2, fold=1))
    ev = evaluate_run('one', runs, reports_dir=tmp_path / 'reports', explain=False)
    report = (tmp_path / 'reports' / 'one' / 'report.md').read_text()
    assert 'tuned, cross-fitted' not in ev.scores.index and 'no cross-fitted row' in report and 'the honest estimate for unseen' not in report
    evaluate_command({'run_name': 'one', 'runs_dir': str(runs), 'reports_dir': str(tmp_path / 'reports'), 'explain': False})
    assert 'in sample' in capsys.readouterr().out


def test_a_run_without_test_probabilities_is_submitted_from_its_saved_fold_models(tmp_path):
    "Submitting with test_probs.csv, without it (a run trained before its test split arrived) and with --data-dir elsewhere gives one file."
    from movie_genre.tfidf import TfidfConfig, train_tfidf_fold
    data, runs = make_demo(tmp_path / 'data', n_train=48, n_test=10), tmp_path / 'runs'
    for k in (1, 2):
        train_fold(TrainConfig(data_dir=str(data), runs_dir=str(runs), run_name='n', folds=2, fold=k, epochs=1, image_size=32))
        train_tfidf_fold(TfidfConfig(data_dir=str(data), runs_dir=str(runs), run_name='t', folds=2, fold=k))
    bare = shutil.copytree(runs, tmp_path / 'bare_runs')
    for stored in bare.glob('*/fold*/test_probs.csv'): stored.unlink()
    later = shutil.copytree(data, tmp_path / 'later')  # the test split given again, from another folder
    for spec, stack in (('n', False), ('t', False), ('n,t', True)):
        kwargs = dict(weights='equal', stack=stack)
        stored = pd.read_csv(make_submission(spec, out=tmp_path / 'stored.csv', runs_dir=runs, **kwargs))
        predicted = pd.read_csv(make_submission(spec, out=tmp_path / 'predicted.csv', runs_dir=bare, **kwargs))
        elsewhere = pd.read_csv(make_submission(spec, later, out=tmp_path / 'elsewhere.csv', runs_dir=runs, **kwargs))
        assert stored.equals(predicted) and stored.equals(elsewhere), spec
        validate_submission(predicted, pd.read_csv(data / 'sample_submission.csv'))


def test_a_stack_fills_a_missing_year_as_its_members_do(tmp_path):
    "With on_bad='skip' the members fill missing years with the kept rows' median; the stack takes that fill, not all rows'."
    from movie_genre.ensemble import load_ensemble
    from movie_genre.predict import load_predictor
    from movie_genre.tfidf import TfidfConfig, train_tfidf_fold
    data, runs = make_demo(tmp_path / 'data', n_train=48, n_test=6), tmp_path / 'runs'
    train = pd.read_csv(data / 'train.csv')
    train['year'] = train['year'].astype(float)
    for i in range(8):  # skipped rows (unreadable posters) with early years: they would move the median of all rows
        (data / 'train' / f'{train.id[i]}.jpg').write_bytes(b'not a poster')
        train.loc[i, 'year'] = 1900.0
    train.loc[10, 'year'] = np.nan
    train.to_csv(data / 'train.csv', index=False)
    for name, C in (('a', 1.0), ('b', 4.0)):
        for k in (1, 2):
            train_tfidf_fold(TfidfConfig(data_dir=str(data), runs_dir=str(runs), run_name=name, folds=2, fold=k, C=C, on_bad='skip'))
    kept = float(train['year'][8:].median())
    assert kept != float(train['year'].median()) and load_predictor('a', runs).year_fill == kept
    assert load_ensemble('a,b', runs, stack=True, verbose=False).config['stack_model']['year_fill'] == kept


def tfidf_runs(tmp_path):
    "A demo set and a TF-IDF run 't' of two folds (seconds to fit: no posters are read)."
    from movie_genre.tfidf import TfidfConfig, train_tfidf_fold
    data, runs = make_demo(tmp_path / 'data', n_train=48, n_test=10), tmp_path / 'runs'
    for k in (1, 2): train_tfidf_fold(TfidfConfig(data_dir=str(data), runs_dir=str(runs), run_name='t', folds=2, fold=k))
    return data, runs


def test_a_run_with_test_probabilities_from_some_folds_is_submitted_from_all_its_models(tmp_path):
    "Fold 1 trained before the test split came, fold 2 after: the submission is every fold model's, not fold 2's alone."
    data, runs = tfidf_runs(tmp_path)
    full = pd.read_csv(make_submission('t', out=tmp_path / 'full.csv', runs_dir=runs))
    (runs / 't' / 'fold1' / 'test_probs.csv').unlink()
    assert pd.read_csv(make_submission('t', out=tmp_path / 'partial.csv', runs_dir=runs)).equals(full)


def test_submit_without_a_sample_submission_fails_before_predicting(tmp_path, monkeypatch):
    import movie_genre.evaluate as evaluate_module
    data, runs = tfidf_runs(tmp_path)
    elsewhere = shutil.copytree(data, tmp_path / 'elsewhere')
    (elsewhere / 'sample_submission.csv').unlink()
    def predicted(*args, **kwargs): raise AssertionError('the test split was predicted before the sample was looked for')
    monkeypatch.setattr(evaluate_module, 'predict_test_split', predicted)
    with pytest.raises(FileNotFoundError, match=r'sample_submission\.csv.*give --data-dir the folder that has it'):
        make_submission('t', elsewhere, out=tmp_path / 'sub.csv', runs_dir=runs)


def test_an_ensemble_whose_member_predicted_another_test_split_is_submitted_from_the_saved_models(tmp_path, capsys):
    "Member u's stored test probabilities are of an older test split (a movie fewer): not an error, the members' models predict."
    from movie_genre.tfidf import TfidfConfig, train_tfidf_fold
    data, runs = tfidf_runs(tmp_path)
    for k in (1, 2): train_tfidf_fold(TfidfConfig(data_dir=str(data), runs_dir=str(runs), run_name='u', folds=2, fold=k, C=4.0))
    for stack in (False, True):
        current = pd.read_csv(make_submission('t,u', out=tmp_path / 'current.csv', runs_dir=runs, stack=stack))
        older = shutil.copytree(runs, tmp_path / f'older{stack}')
        for k in (1, 2):
            stored = older / 'u' / f'fold{k}' / 'test_probs.csv'
            pd.read_csv(stored).iloc[1:].to_csv(stored, index=False)
        capsys.readouterr()
        assert pd.read_csv(make_submission('t,u', out=tmp_path / 'older.csv', runs_dir=older, stack=stack)).equals(current), stack
        said = capsys.readouterr().out
        assert 'runs t and u predicted different test movies' in said and 'predicted by the saved fold models' in said, said
