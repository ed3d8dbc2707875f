"""The benchmark script (bench/benchmark.py) on the demo set: its scoring (TF-IDF runs, seconds) and a recipe made from a pretraining (tiny)."""
import importlib.util
import json
from pathlib import Path

import pytest

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
    train_tfidf_fold(TfidfConfig(data_dir=str(data), runs_dir=str(runs), run_name='one', folds=2, fold=1))
    one, two = benchmark.score('one', str(runs)), benchmark.score('two', str(runs))
    assert one['folds'] == 1 and one['thresholds'].startswith('in sample') and 0 < one['micro'] <= 1 and 0 < one['macro'] <= 1
    assert two['folds'] == 2 and two['thresholds'] == 'cross-fitted'


def test_a_recipe_that_starts_from_a_pretraining_makes_it_first(benchmark, tmp_path, monkeypatch):
    "A recipe with init=NAME gets its pretraining made by `movie-genre pretrain` before its folds train from it; then it is scored."
    data, runs, reports = make_demo(tmp_path / 'data', n_train=24, n_test=6), tmp_path / 'runs', tmp_path / 'reports'
    tiny = dict(width=16, depths='1,1', image_size=32, reports_dir=str(reports))
    monkeypatch.setitem(benchmark.PRETRAININGS, 'tiny-ssl', dict(tiny, epochs=1, batch_size=8))
    monkeypatch.setitem(benchmark.RECIPES, 'tiny', dict(tiny, init='tiny-ssl', folds=2, epochs=1, batch_size=8))
    table = benchmark.main(['--data-dir', str(data), '--recipes', 'tiny', '--folds', '1', '--runs-dir', str(runs)])
    config = json.loads((runs / 'tiny' / 'fold1' / 'config.json').read_text())
    assert (runs / 'tiny-ssl' / 'backbone.pt').is_file() and config['init'] == 'tiny-ssl'
    assert table.loc['tiny', 'folds'] == 1 and table.loc['tiny', 'thresholds'].startswith('in sample')
