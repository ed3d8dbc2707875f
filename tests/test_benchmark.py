"""The benchmark script (bench/benchmark.py) on the demo set: its scoring (TF-IDF runs, seconds), and the recipes that need a pretraining or a teacher first (tiny)."""
import importlib.util
import json
from pathlib import Path

import pytest

from movie_genre.checkpoints import file_digest
from movie_genre.demo import make_demo
from movie_genre.tfidf import TfidfConfig, train_tfidf_fold

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def benchmark(tmp_path, monkeypatch):
    monkeypatch.setenv('MOVIE_GENRE_CACHE', str(tmp_path / 'cache'))
    spec = importlib.util.spec_from_file_location('benchmark', ROOT / 'bench' / 'benchmark.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_one_fold_ablation_is_scored_in_sample_and_says_so(benchmark, tmp_path):
    "`--folds 1` (the ablation protocol) gets a row with thresholds tuned on its own movies, not a crash; two folds are cross-fitted."
    data, runs = make_demo(tmp_path / 'data', n_train=48, n_test=6), tmp_path / 'runs'
    for k in (1, 2): train_tfidf_fold(TfidfConfig(data_dir=str(data), runs_dir=str(runs), run_name='two', folds=2, fold=k))
    for name in ('one', 'another'): train_tfidf_fold(TfidfConfig(data_dir=str(data), runs_dir=str(runs), run_name=name, folds=2, fold=1))
    one, two = benchmark.score('one', str(runs)), benchmark.score('two', str(runs))
    assert one['folds'] == 1 and one['estimate'].startswith('in sample') and 0 < one['micro'] <= 1 and 0 < one['macro'] <= 1
    assert two['folds'] == 2 and two['estimate'] == 'cross-fitted'
    # a stack (or a tuned blend) of one-fold runs has no other fold to be fitted on: its row says so, and the table goes on
    stack = benchmark.score('one,another', str(runs), stack=True)
    assert stack['run'] == 'one+another-stacked' and stack['estimate'].startswith('not scored') and 'needs at least 2 folds' in stack['estimate']


def test_a_recipe_that_starts_from_a_pretraining_makes_it_first(benchmark, tmp_path, monkeypatch):
    "A recipe with init=NAME gets its pretraining made by `movie-genre pretrain` before its folds train from it; then it is scored."
    data, runs, reports = make_demo(tmp_path / 'data', n_train=24, n_test=6), tmp_path / 'runs', tmp_path / 'reports'
    tiny = dict(width=16, depths='1,1', image_size=32, reports_dir=str(reports))
    monkeypatch.setitem(benchmark.PRETRAININGS, 'tiny-ssl', dict(tiny, epochs=1, batch_size=8))
    monkeypatch.setitem(benchmark.RECIPES, 'tiny', dict(tiny, init='tiny-ssl', folds=2, epochs=1, batch_size=8))
    table = benchmark.main(['--data-dir', str(data), '--recipes', 'tiny', '--folds', '1', '--runs-dir', str(runs)])
    config = json.loads((runs / 'tiny' / 'fold1' / 'config.json').read_text())
    assert (runs / 'tiny-ssl' / 'backbone.pt').is_file() and config['init'] == 'tiny-ssl'
    assert table.loc['tiny', 'folds'] == 1 and table.loc['tiny', 'estimate'].startswith('in sample')
    # a backbone already there is used as it is, even without the pretraining's last.pt (copied from another machine)
    made = file_digest(runs / 'tiny-ssl' / 'backbone.pt')
    (runs / 'tiny-ssl' / 'last.pt').unlink()
    benchmark.main(['--data-dir', str(data), '--recipes', 'tiny', '--folds', '1', '--runs-dir', str(runs)])
    assert file_digest(runs / 'tiny-ssl' / 'backbone.pt') == made and not (runs / 'tiny-ssl' / 'last.pt').exists()


def test_a_pseudo_label_recipe_has_its_teacher_trained_first(benchmark, tmp_path, monkeypatch):
    "Named alone (or before its teacher), a student recipe gets its teacher recipe trained first, not a refusal."
    data, runs = make_demo(tmp_path / 'data', n_train=64, n_test=6), tmp_path / 'runs'
    monkeypatch.setitem(benchmark.RECIPES, 'teacher', None)  # a TF-IDF member: seconds
    monkeypatch.setitem(benchmark.RECIPES, 'student', dict(pseudo='teacher', pseudo_posters='validation', width=16, depths='1,1',
                                                           image_size=32, epochs=1, batch_size=8, reports_dir=str(tmp_path / 'reports')))
    assert benchmark.with_teachers(['student', 'teacher']) == ['teacher', 'student']
    table = benchmark.main(['--data-dir', str(data), '--recipes', 'student', '--folds', '1', '--runs-dir', str(runs)])
    assert list(table.index) == ['student'] and (runs / 'teacher' / 'fold1' / 'oof.csv').is_file()
    assert json.loads((runs / 'student' / 'fold1' / 'config.json').read_text())['pseudo'] == 'teacher'
