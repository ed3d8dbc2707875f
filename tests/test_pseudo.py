"""Pseudo-labels: fold k learns the test posters from fold k of its teacher, and no label of fold k's validation movies
reaches fold k (the honesty test); pseudo-labels that could leak are refused before anything runs."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from movie_genre.data import load_split
from movie_genre.demo import make_demo
from movie_genre.runs import FOLDS_FILE, OOF_FILE, SPLIT_FILE, TEST_FILE
from movie_genre.train import TrainConfig, check_fold, fold_datasets, pseudo_targets, train_fold, with_pseudo_labels

FOLDS = 2


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp('data') / 'demo', n_train=48, n_test=8)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv('MOVIE_GENRE_CACHE', str(tmp_path_factory.getbasetemp() / 'cache'))


def tiny(data_dir, runs, run_name, **kw):
    return TrainConfig(**{'data_dir': str(data_dir), 'runs_dir': str(runs), 'run_name': run_name, 'folds': FOLDS, 'epochs': 1,
                          'image_size': 32, 'batch_size': 16, 'width': 16, 'threads': 1, **kw})


def train_run(data_dir, runs, run_name, folds=range(1, FOLDS + 1), **kw):
    for k in folds: train_fold(tiny(data_dir, runs, run_name, fold=k, **kw))


def oof(runs, run_name, k) -> pd.DataFrame:
    return pd.read_csv(runs / run_name / f'fold{k}' / OOF_FILE).sort_values('id').set_index('id')


@pytest.fixture(scope='module')
def trained(demo, tmp_path_factory):
    "A teacher run and two student runs pseudo-labelled by it, on the test posters and on each fold's own validation posters, every fold."
    runs = tmp_path_factory.mktemp('runs')
    train_run(demo, runs, 'teacher')
    train_run(demo, runs, 'student', pseudo='teacher')
    train_run(demo, runs, 'student-own', pseudo='teacher', pseudo_posters='validation')
    return runs


def relabelled(demo, where, ids):
    "A copy of the demo data in which the movies `ids` have other genres."
    copy = shutil.copytree(demo, where)
    table = pd.read_csv(copy / 'train.csv')
    rows = table['id'].isin(ids)
    table.loc[rows, 'genres'] = table.loc[rows, 'genres'].map(lambda g: "['Comedy']" if g == "['Horror']" else "['Horror']")
    table.to_csv(copy / 'train.csv', index=False)
    return copy


def test_a_student_takes_its_teacher_split_and_trains_the_same_twice(demo, trained, capsys):
    assert (trained / 'student' / FOLDS_FILE).read_text() == (trained / 'teacher' / FOLDS_FILE).read_text()
    train_run(demo, trained, 'again', folds=[1], pseudo='teacher')  # CPU determinism: what the honesty test relies on
    posters = len(pd.read_csv(demo / 'test.csv'))  # the training output says what the fold added
    assert f'fold 1 of again: + {posters:,} test posters soft-labelled by fold 1 of teacher (weight 0.5)' in capsys.readouterr().out
    pd.testing.assert_frame_equal(oof(trained, 'again', 1), oof(trained, 'student', 1), check_exact=True)


def test_fold_k_learns_the_test_posters_from_fold_k_of_its_teacher(demo, trained):
    data = load_split(demo, 'train', 32)
    test = load_split(demo, 'test', 32, genres=data.genres, year_fill=data.year_fill)
    teacher = {k: pd.read_csv(trained / 'teacher' / f'fold{k}' / TEST_FILE).set_index('id') for k in range(1, FOLDS + 1)}
    for k in range(1, FOLDS + 1):
        cfg = tiny(demo, trained, 'student', fold=k, pseudo='teacher', pseudo_weight=0.25)
        train_ds, _ = fold_datasets(cfg, data, pd.read_csv(trained / 'student' / FOLDS_FILE))
        both = with_pseudo_labels(cfg, train_ds, test)  # what train_fold trains on
        batch = both.batch(np.arange(len(both)), seed=0)
        pseudo = (batch['weight'] == 0.25).numpy()
        assert pseudo.sum() == len(test) and (batch['weight'][~pseudo] == 1).all()
        ids, targets = batch['id'][pseudo].numpy(), batch['labels'][pseudo].numpy()
        assert sorted(ids) == sorted(test.ids)
        assert np.allclose(targets, teacher[k].loc[ids, data.genres].to_numpy(), atol=1e-7)
        assert not np.allclose(targets, teacher[3 - k].loc[ids, data.genres].to_numpy(), atol=1e-4)  # not the other fold's
        # two teachers: the mean of their fold k
        student = pd.read_csv(trained / 'student' / f'fold{k}' / TEST_FILE).set_index('id').loc[ids, data.genres].to_numpy()
        both_teachers = pseudo_targets(tiny(demo, trained, 'third', fold=k, pseudo='teacher, student'), ids, data.genres)
        assert np.allclose(both_teachers, (teacher[k].loc[ids, data.genres].to_numpy() + student) / 2, atol=1e-7)


def test_fold_k_learns_its_own_validation_posters_from_fold_k_of_its_teacher(demo, trained, capsys):
    "pseudo_posters='validation': fold k's validation posters, unlabelled, with fold k of the teacher's out-of-fold probabilities as targets."
    data, split = load_split(demo, 'train', 32), pd.read_csv(trained / 'teacher' / FOLDS_FILE)
    for k in range(1, FOLDS + 1):
        cfg = tiny(demo, trained, 'student-own', fold=k, pseudo='teacher', pseudo_posters='validation')
        train_ds, valid_ds = fold_datasets(cfg, data, split)
        both = with_pseudo_labels(cfg, train_ds, None, valid_ds)  # no test posters needed
        batch = both.batch(np.arange(len(both)), seed=0)
        pseudo = (batch['weight'] == 0.5).numpy()
        ids = batch['id'][pseudo].numpy()
        assert sorted(ids) == sorted(split.loc[split['fold'] == k, 'id'])
        assert np.allclose(batch['labels'][pseudo].numpy(), oof(trained, 'teacher', k).loc[ids, data.genres].to_numpy(), atol=1e-7)
        assert not np.allclose(batch['labels'][pseudo].numpy(), data.labels[valid_ds.indices], atol=1e-3)  # not their labels
    train_run(demo, trained, 'own-again', folds=[1], pseudo='teacher', pseudo_posters='validation')
    assert f"fold 1 of own-again: + {(split['fold'] == 1).sum():,} validation posters soft-labelled by fold 1 of teacher" in capsys.readouterr().out
    no_test = shutil.copytree(demo, trained.parent / 'no-test-data'); (no_test / 'test.csv').unlink()
    check_fold(tiny(no_test, trained, 'own-no-test', fold=2, pseudo='teacher', pseudo_posters='validation'))  # a data folder without test.csv


@pytest.mark.parametrize('posters', ['test', 'validation'])
def test_no_label_of_a_fold_s_validation_movies_reaches_it(demo, trained, tmp_path, posters):
    "The honesty test, on every fold, for both kinds of unlabelled posters: new labels for fold k's validation movies (teacher and student retrained) leave fold k's out-of-fold predictions as they were; new labels for a few of its training movies do not (the control)."
    student = {'test': 'student', 'validation': 'student-own'}[posters]
    split = pd.read_csv(trained / 'teacher' / FOLDS_FILE)
    for k in range(1, FOLDS + 1):
        for change, ids in (('validation', split.loc[split['fold'] == k, 'id']), ('training', split.loc[split['fold'] != k, 'id'][:4])):
            data, runs = relabelled(demo, tmp_path / f'data-{change}{k}', ids), tmp_path / f'runs-{change}{k}'
            (runs / 'teacher').mkdir(parents=True)
            for name in (FOLDS_FILE, SPLIT_FILE):  # the split held fixed: make_folds stratifies on the labels
                shutil.copy(trained / 'teacher' / name, runs / 'teacher' / name)
            train_run(data, runs, 'teacher')  # every fold: its other folds learn fold k's new labels, and must not pass them on
            train_run(data, runs, student, folds=[k], pseudo='teacher', pseudo_posters=posters)  # takes the teacher's split
            difference = float((oof(runs, student, k) - oof(trained, student, k)).abs().to_numpy().max())
            if change == 'validation': assert difference < 1e-6, f'fold {k} saw its validation labels: its OOF moved by {difference}'
            else: assert difference > 1e-5, f'fold {k} did not move ({difference}) with new labels for its training movies: the test is vacuous'


def refused(cfg, error, *words):
    existed = cfg.fold_dir.parent.exists()
    with pytest.raises(error) as e: check_fold(cfg)
    for word in words: assert word in str(e.value), (word, str(e.value))
    assert existed or not cfg.fold_dir.parent.exists(), 'a refused fold made its run folder'


def test_pseudo_labels_that_could_leak_are_refused_before_anything_runs(demo, trained, tmp_path):
    no_test = shutil.copytree(demo, tmp_path / 'no-test'); (no_test / 'test.csv').unlink()
    refused(tiny(no_test, trained, 'x', pseudo='teacher'), FileNotFoundError, 'test.csv', 'without -p pseudo', '-p pseudo_posters validation')
    with pytest.raises(ValueError, match="pseudo_posters must be one of"): TrainConfig(pseudo='teacher', pseudo_posters='train')
    with pytest.raises(ValueError, match="needs -p pseudo TEACHER"): TrainConfig(pseudo_posters='validation')  # alone it would do nothing
    for itself in ('teacher', './teacher', 'teacher/', 'student,teacher/.'):  # any spelling of the run's own folder
        refused(tiny(demo, trained, 'teacher', pseudo=itself, overwrite=True), ValueError, 'its own teacher')
    refused(tiny(demo, trained, 'x', pseudo='nobody'), FileNotFoundError, 'nobody', 'train the teacher first')
    (trained / 'ensembles' / 'teacher+student-stacked').mkdir(parents=True)
    refused(tiny(demo, trained, 'x', pseudo='teacher+student-stacked'), ValueError, 'fitted ensemble', 'member runs')
    refused(tiny(demo, trained, 'x', pseudo='ensembles/teacher+student-stacked'), ValueError, 'fitted ensemble')
    shutil.rmtree(trained / 'ensembles')
    (trained / 'pt').mkdir(); (trained / 'pt' / 'pretrain.json').write_text('{}')  # a pretraining: a backbone, no fold to teach
    refused(tiny(demo, trained, 'x', pseudo='pt'), ValueError, "'pt', a pretraining", '-p init pt')
    shutil.rmtree(trained / 'pt')

    for name, damage in (('unfinished', lambda fold: (fold / OOF_FILE).unlink()), ('missing', shutil.rmtree),
                         ('untested', lambda fold: (fold / TEST_FILE).unlink())):
        shutil.copytree(trained / 'teacher', trained / name)
        damage(trained / name / 'fold2')
        refused(tiny(demo, trained, 'x', fold=2, pseudo=f'teacher,{name}'), FileNotFoundError, f'fold 2 of teacher run {name}',
                f'--run-name {name} --folds 2')
        check_fold(tiny(demo, trained, 'x', fold=1, pseudo=f'teacher,{name}'))  # its fold 1 may teach
    shutil.copytree(trained / 'teacher', trained / 'picky')  # fold 1 kept its best validation epoch
    (config := trained / 'picky' / 'fold1' / 'config.json').write_text(config.read_text().replace('"select": "last"', '"select": "best"'))
    refused(tiny(demo, trained, 'x', pseudo='picky'), ValueError, 'fold 1 of teacher run picky chose its weights', "select='last'")
    other = trained / 'teacher' / 'fold1' / TEST_FILE
    shutil.copytree(trained / 'teacher', trained / 'short'); (trained / 'short' / 'fold1' / TEST_FILE).write_text(''.join(other.read_text().splitlines(True)[:-1]))
    refused(tiny(demo, trained, 'x', pseudo='short'), ValueError, 'short/fold1/test_probs.csv', '1 of those missing')

    refused(tiny(demo, trained, 'x', pseudo='teacher', folds=3), ValueError, '-p folds 2 -p fold_seed 42')
    refused(tiny(demo, trained, 'x', pseudo='teacher', fold_seed=7), ValueError, '-p folds 2 -p fold_seed 42')
    own = trained / 'own'; own.mkdir()
    split = pd.read_csv(trained / 'teacher' / FOLDS_FILE)
    split.assign(fold=3 - split['fold']).to_csv(own / FOLDS_FILE, index=False)  # its own split, the folds swapped
    refused(tiny(demo, trained, 'own', pseudo='teacher'), ValueError, 'another split', 'new run name')

    for bad in (-1.0, float('nan'), float('inf')):
        with pytest.raises(ValueError, match='pseudo_weight must be a finite number 0 or more'): TrainConfig(pseudo='teacher', pseudo_weight=bad)
    with pytest.raises(ValueError, match='pseudo must name runs joined by commas'): TrainConfig(pseudo='teacher,')


def test_the_report_and_the_comparison_say_which_runs_learnt_from_the_test_posters(trained, tmp_path):
    from movie_genre.compare import compare_runs
    from movie_genre.evaluate import evaluate, write_report
    from movie_genre.runs import load_run
    used = 'pseudo-labels: 8 test posters, soft-labelled by fold k of teacher (weight 0.5)'
    report = write_report(evaluate(load_run('student', trained, verbose=False)), tmp_path / 'student').read_text()
    assert f'Unlabelled posters: {used}.' in report
    own = "pseudo-labels: fold k's own validation posters (unlabelled), soft-labelled by fold k of teacher (weight 0.5)"
    table = compare_runs(['teacher', 'student', 'student-own'], trained, tmp_path / 'compare')['table']
    assert table['unlabelled posters'].tolist() == ['none', used, own]


def test_a_new_student_trains_every_fold_of_its_teacher_split(trained):
    from movie_genre.cli import folds_to_train
    params = {'run_name': 'new', 'runs_dir': str(trained), 'pseudo': 'teacher'}
    assert folds_to_train(TrainConfig, params, None) == [1, 2] and (params['folds'], params['fold_seed']) == (2, 42)  # not 1-8


def test_a_run_holds_one_kind_of_model_and_the_advice_names_it(demo, trained):
    "A TF-IDF teacher's missing fold is to be trained with --model tfidf; a network fold in a TF-IDF run, or the reverse, is refused."
    from movie_genre.tfidf import TfidfConfig, train_tfidf_fold
    tfidf = lambda run_name, **kw: TfidfConfig(data_dir=str(demo), runs_dir=str(trained), run_name=run_name, folds=FOLDS, **kw)
    train_tfidf_fold(tfidf('tf', fold=1))
    refused(tiny(demo, trained, 'x', pseudo='tf', fold=2), FileNotFoundError, 'movie-genre train --model tfidf --run-name tf --folds 2')
    refused(tiny(demo, trained, 'tf', fold=2), ValueError, 'a TF-IDF run', '--model tfidf')
    refused(tiny(demo, trained, 'tf', fold=1), ValueError, 'a TF-IDF run')  # its finished fold too: not read as a network's
    network = shutil.copytree(trained / 'teacher', trained / 'net')
    with pytest.raises(ValueError, match='a network run'): train_tfidf_fold(tfidf('net', fold=1, overwrite=True))
    assert 'model' not in json.loads((network / 'fold1' / 'config.json').read_text())  # its network fold is intact
    shutil.rmtree(network); shutil.rmtree(trained / 'tf')


def test_a_submission_warns_of_members_pseudo_labelled_on_their_own_validation_posters(demo, trained, tmp_path, capsys):
    "Their out-of-fold F1 counts a gain (pseudo-labels of the scored posters) that their test predictions lack: a measurement, not a member to submit."
    from movie_genre.evaluate import make_submission
    warning = "learnt from each fold's own validation posters"
    make_submission('student', demo, tmp_path / 'a.csv', trained)
    assert warning not in capsys.readouterr().out
    make_submission('teacher,student-own', demo, tmp_path / 'b.csv', trained)
    out = capsys.readouterr().out
    assert f'warning: student-own {warning}' in out and '-p pseudo_posters test' in out and (tmp_path / 'b.csv').is_file()
