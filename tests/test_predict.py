"""`movie_genre.predict` on a tiny trained demo run: thresholds, single poster, folder and CSV modes,
title encoding from word-vector files, and a clear error for each bad input."""
import gzip
import json
import os
import shutil
import subprocess
import sys
from argparse import Namespace
from movie_genre.cli import build_parser
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
from movie_genre.data import load_split, parse_genres, tokenize
from movie_genre.demo import DEMO_GENRES, demo_word_vectors, make_demo
from movie_genre.runs import THRESHOLDS_FILE, finished_folds, run_thresholds
from movie_genre.metrics import decode, tune_thresholds
from movie_genre.predict import Predictor, encode_title, predict_cli, predict_files, read_word_vectors
from movie_genre.train import TrainConfig, train_fold


def write_vectors(path, vectors: dict, kind: str):
    "A word-vector file of `kind`: 'word2vec' (text with header), 'glove' (no header), 'binary' (word2vec binary)."
    dim = len(next(iter(vectors.values())))
    with open(path, 'wb') as f:
        if kind != 'glove': f.write(f'{len(vectors)} {dim}\n'.encode())
        for word, vector in vectors.items():
            if kind == 'binary': f.write(word.encode() + b' ' + np.asarray(vector, '<f4').tobytes() + b'\n')
            else: f.write(f"{word} {' '.join(f'{x:.9g}' for x in vector)}\n".encode())
    return path


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A demo set and a run 'p' of two folds trained for one epoch on 32-pixel posters."
    tmp = tmp_path_factory.mktemp('predict')
    patch = pytest.MonkeyPatch()
    patch.setenv('MOVIE_GENRE_CACHE', str(tmp / 'cache'))
    data = make_demo(tmp / 'data', n_train=80, n_test=10)
    for k in (1, 2):
        train_fold(TrainConfig(data_dir=str(data), runs_dir=str(tmp / 'runs'), run_name='p', folds=2, fold=k,
                               epochs=1, image_size=32))
    yield SimpleNamespace(tmp=tmp, data=data, runs=tmp / 'runs', predictor=Predictor.from_run('p', runs_dir=tmp / 'runs'),
                          vectors=write_vectors(tmp / 'vectors.txt', demo_word_vectors(50), 'word2vec'),
                          train=pd.read_csv(data / 'train.csv'), test=pd.read_csv(data / 'test.csv'))
    patch.undo()


def test_thresholds_are_tuned_on_the_pooled_out_of_fold_probabilities(run):
    saved = json.loads((run.runs / 'p' / THRESHOLDS_FILE).read_text())['macro']
    assert saved['metric'] == 'macro' and saved['genres'] == DEMO_GENRES and saved['folds'] == [1, 2]
    oof = pd.concat([pd.read_csv(run.runs / 'p' / f'fold{k}' / 'oof.csv') for k in (1, 2)], ignore_index=True)
    data = load_split(run.data, 'train', image_size=32)
    labels = data.labels[pd.Index(data.ids).get_indexer(oof['id'])]
    expected = tune_thresholds(labels, oof[DEMO_GENRES].to_numpy(), metric='macro', max_genres=3)
    assert np.allclose(saved['thresholds'], expected) and np.allclose(run.predictor.thresholds, expected)


def test_saved_thresholds_are_used_and_stale_ones_retuned(run, tmp_path):
    copy = shutil.copytree(run.runs / 'p', tmp_path / 'p')
    current = json.loads((copy / THRESHOLDS_FILE).read_text())['macro']
    mine = {**current, 'genres': DEMO_GENRES[::-1], 'thresholds': [0.1 * i for i in range(8)]}  # same digest: trusted
    (copy / THRESHOLDS_FILE).write_text(json.dumps({'macro': mine}))
    assert np.allclose(Predictor.from_run('p', runs_dir=tmp_path).thresholds, [0.1 * i for i in range(8)][::-1])
    (copy / THRESHOLDS_FILE).write_text(json.dumps({'macro': {**mine, 'oof_digest': 'another oof'}}))  # a fold retrained since
    assert run_thresholds('p', tmp_path) == current


def test_one_poster_gives_the_probabilities_training_wrote(run):
    movie = run.test.iloc[0]
    result = run.predictor.predict(run.data / 'test' / f'{movie.id}.jpg', title_array=run.data / 'test_w2v' / f'{movie.id}.npy',
                                   year=movie.year)
    written = np.mean([pd.read_csv(run.runs / 'p' / f'fold{k}' / 'test_probs.csv').set_index('id').loc[movie.id, DEMO_GENRES]
                       for k in (1, 2)], axis=0)
    probs = np.array(list(result['probabilities'].values()))
    assert list(result['probabilities']) == DEMO_GENRES and np.allclose(probs, written, atol=1e-5)
    chosen = decode(probs[None], run.predictor.thresholds)[0]
    assert list(result['genres']) == [DEMO_GENRES[g] for g in np.argsort(-probs, kind='stable') if chosen[g]]
    assert 1 <= len(result['genres']) <= 3 and result['notes'] == []


def test_one_fold_alone(run):
    single = Predictor.from_run('p', runs_dir=run.runs, fold=2)
    movie = run.test.iloc[1]
    result = single.predict(run.data / 'test' / f'{movie.id}.jpg', title_array=run.data / 'test_w2v' / f'{movie.id}.npy', year=movie.year)
    written = pd.read_csv(run.runs / 'p' / 'fold2' / 'test_probs.csv').set_index('id').loc[movie.id, DEMO_GENRES]
    assert single.folds == [2] and np.allclose(list(result['probabilities'].values()), written, atol=1e-5)


@pytest.mark.parametrize('kind', ['word2vec', 'glove', 'binary', 'gzip'])
def test_a_vectors_file_gives_the_data_title_arrays(run, tmp_path, kind):
    path = write_vectors(tmp_path / 'vectors', demo_word_vectors(50), 'glove' if kind == 'gzip' else kind)
    if kind == 'gzip':
        path = tmp_path / 'vectors.txt.gz'
        path.write_bytes(gzip.compress((tmp_path / 'vectors').read_bytes()))
    rows = run.train.head(12)
    vectors = read_word_vectors(path, {t for title in rows.title for t in tokenize(title)})
    assert vectors.dim == 50 and set(vectors.vectors) <= set(demo_word_vectors(50))
    for movie in rows.itertuples():
        array, unknown = encode_title(movie.title, vectors, (15, 50))
        assert np.array_equal(array, np.load(run.data / 'train_w2v' / f'{movie.id}.npy')), movie.title
        assert set(unknown) == {t for t in tokenize(movie.title) if t not in demo_word_vectors(50)}
    movie = rows.iloc[0]
    poster = run.data / 'train' / f'{movie.id}.jpg'
    from_title = run.predictor.predict(poster, movie.title, year=movie.year, vectors=path)
    from_array = run.predictor.predict(poster, title_array=run.data / 'train_w2v' / f'{movie.id}.npy', year=movie.year)
    assert from_title['probabilities'] == pytest.approx(from_array['probabilities'], abs=1e-6)


def test_unknown_words_and_defaults_are_reported(run):
    poster = run.data / 'test' / f'{run.test.id[0]}.jpg'
    result = run.predictor.predict(poster, 'Love and the Zorblax Quimby', vectors=demo_word_vectors(50))
    assert result['unknown_words'] == ['zorblax', 'quimby'] and result['year'] == run.predictor.year_fill
    assert any('no year' in note for note in result['notes'])
    nothing_known = run.predictor.predict(poster, 'Zorblax', year=2001, vectors=run.vectors)
    assert nothing_known['unknown_words'] == ['zorblax'] and 'no word of the title' in nothing_known['notes'][0]
    assert 'no title' in run.predictor.predict(poster, no_title=True, year=2001)['notes'][0]


def test_a_folder_of_posters(run, tmp_path, capsys, monkeypatch):
    for name, movie_id in zip(['love_heart', 'blood_night', 'laugh party'], run.test.id):
        shutil.copy(run.data / 'test' / f'{movie_id}.jpg', tmp_path / f'{name}.jpg')
    (tmp_path / 'broken.jpg').write_bytes(b'not a jpeg')
    (tmp_path / 'readme.txt').write_text('not a poster')
    table = predict_files(run.predictor, tmp_path, vectors=run.vectors, progress=False)
    assert list(table.title) == ['blood night', 'broken', 'laugh party', 'love heart']
    assert 'cannot read the poster' in table.error[1] and table.genres[1] is None and np.isnan(table.Drama[1])
    assert (table.error.drop(1) == '').all() and all(1 <= len(g) <= 3 for g in table.genres.drop(1))
    assert '1 of 4 movies could not be predicted' in capsys.readouterr().out
    with_default = predict_files(run.predictor, tmp_path, progress=False)  # the demo data's own word_vectors.txt
    assert np.allclose(with_default.drop(1)[DEMO_GENRES], table.drop(1)[DEMO_GENRES])
    monkeypatch.setattr(Predictor, 'default_vectors', property(lambda self: None))
    with pytest.raises(ValueError, match='need word vectors'): predict_files(run.predictor, tmp_path)
    poster_only = predict_files(run.predictor, tmp_path, no_title=True, progress=False)
    assert poster_only.notes[0].startswith('no title')


def test_a_csv_of_movies(run, tmp_path):
    first, second = run.test.id[:2]
    (tmp_path / 'posters').mkdir()
    for movie_id in (first, second): shutil.copy(run.data / 'test' / f'{movie_id}.jpg', tmp_path / 'posters')
    np.save(tmp_path / 'wide.npy', np.ones((15, 300), np.float32))
    rows = pd.DataFrame([
        dict(poster=f'posters/{first}.jpg', title='Blood Night', year=1982),
        dict(poster=f'posters/{second}.jpg', title_array=str(run.data / 'test_w2v' / f'{second}.npy')),
        dict(poster='posters/missing.jpg', title='Lost', year=1990),
        dict(poster=f'posters/{first}.jpg', title='', year=1990),
        dict(poster=f'posters/{first}.jpg', title='Wide', title_array='wide.npy'),
        dict(poster=f'posters/{first}.jpg', title='Love', year='soon'),
    ])
    rows.to_csv(tmp_path / 'movies.csv', index=False)
    table = predict_files(run.predictor, tmp_path / 'movies.csv', vectors=run.vectors, out=tmp_path / 'out' / 'pred.csv',
                          progress=False)
    assert list(table.error[:2]) == ['', ''] and table.year[0] == 1982
    for row, message in [(2, 'no poster file'), (3, 'empty title'), (4, 'shape (15, 300)'), (5, 'year must be a number')]:
        assert message in table.error[row], (row, table.error[row])
    written = pd.read_csv(tmp_path / 'out' / 'pred.csv')
    assert list(written.columns[:4]) == ['poster', 'title', 'year', 'genres'] and set(DEMO_GENRES) <= set(written.columns)
    assert parse_genres(written.genres[0]) == table.genres[0] and np.allclose(written.Drama[:2], table.Drama[:2])


def test_one_poster_through_predict_files_and_the_cli(run, tmp_path, capsys):
    poster = run.data / 'test' / f'{run.test.id[0]}.jpg'
    table = predict_files(run.predictor, poster, vectors=run.vectors, title='Love Story', year=1999)
    assert len(table) == 1 and table.title[0] == 'Love Story' and table.error[0] == ''
    args = build_parser().parse_args(['predict', '--run-name', 'p', '--runs-dir', str(run.runs), str(poster),
                                      '--title', 'Love Story', '--year', '1999', '--vectors', str(run.vectors)])
    predict_cli(args)
    assert capsys.readouterr().out.startswith(f'{poster}: {table.genres[0][0]} (')
    out = tmp_path / 'pred.csv'
    predict_cli(Namespace(**{**vars(args), 'inputs': [str(poster), str(poster)], 'title': None, 'year': None, 'out': str(out)}))
    assert len(pd.read_csv(out)) == 2 and '2 predictions written' in capsys.readouterr().out
    with pytest.raises(ValueError, match='go with a single poster'):
        predict_files(run.predictor, [poster, poster], vectors=run.vectors, title='Love')


@pytest.mark.parametrize('poster, kwargs, error, message', [
    ('nowhere.jpg', dict(title='Love'), FileNotFoundError, 'no poster file'),
    ('broken.jpg', dict(title='Love'), ValueError, 'cannot read the poster'),
    ('empty.jpg', dict(title='Love'), ValueError, 'cannot read the poster'),
    ('good', dict(title='   '), ValueError, 'empty title'),
    ('good', dict(), ValueError, 'empty title'),
    ('good', dict(title='Love', vectors=None), ValueError, 'needs word vectors'),
    ('good', dict(title='Love', vectors=demo_word_vectors(8)), ValueError, '8 dimensions'),
    ('good', dict(title='Love', vectors='nowhere.txt'), FileNotFoundError, 'no word-vector file'),
    ('good', dict(title_array=np.zeros((10, 50))), ValueError, 'shape (10, 50)'),
    ('good', dict(title_array='nowhere.npy'), FileNotFoundError, 'no title array file'),
    ('good', dict(title='Love', year='soon'), ValueError, 'year must be a number'),
])
def test_bad_input_for_one_movie_is_a_clear_error(run, tmp_path, monkeypatch, poster, kwargs, error, message):
    monkeypatch.setattr(Predictor, 'default_vectors', property(lambda self: None))  # no vectors unless given
    (tmp_path / 'broken.jpg').write_bytes(b'\xff\xd8\xff not really a jpeg')
    (tmp_path / 'empty.jpg').write_bytes(b'')
    poster = run.data / 'test' / f'{run.test.id[0]}.jpg' if poster == 'good' else tmp_path / poster
    kwargs = {'vectors': run.vectors, **kwargs}
    if kwargs['vectors'] == 'nowhere.txt': kwargs['vectors'] = tmp_path / 'nowhere.txt'
    if isinstance(kwargs.get('title_array'), str): kwargs['title_array'] = tmp_path / kwargs['title_array']
    with pytest.raises(error, match=message.replace('(', r'\(').replace(')', r'\)')):
        run.predictor.predict(poster, **kwargs)


def test_a_run_without_a_finished_fold_is_a_clear_error(run, tmp_path):
    with pytest.raises(FileNotFoundError, match="no run 'nothing'"): Predictor.from_run('nothing', runs_dir=tmp_path)
    unfinished = tmp_path / 'u' / 'fold1'
    unfinished.mkdir(parents=True)
    shutil.copy(run.runs / 'p' / 'fold1' / 'model.pt', unfinished)  # training, not finished: no oof.csv yet
    assert finished_folds(tmp_path / 'u') == [] and finished_folds(run.runs / 'p') == [1, 2]
    with pytest.raises(FileNotFoundError, match='no finished fold'): Predictor.from_run('u', runs_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r'fold 3 .* not finished; the finished folds are \[1, 2\]'):
        Predictor.from_run('p', runs_dir=run.runs, fold=3)


def test_truncated_binary_vectors_are_refused(run, tmp_path):
    path = write_vectors(tmp_path / 'vectors.bin', demo_word_vectors(50), 'binary')
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(ValueError, match='ends early'): read_word_vectors(path, ['nowhere'])


def test_a_movie_without_a_year_gets_the_same_input_in_training_and_prediction(tmp_path, monkeypatch):
    "Missing years take the training data's median everywhere: the test split's own median would give other inputs."
    monkeypatch.setenv('MOVIE_GENRE_CACHE', str(tmp_path / 'cache'))
    data = make_demo(tmp_path / 'data', n_train=60, n_test=12)
    test = pd.read_csv(data / 'test.csv')
    test['year'] = test['year'].astype(float)
    test.loc[:5, 'year'] = np.nan  # the test split's own median moves far from the training data's
    test.loc[6:, 'year'] = 1930.0
    test.to_csv(data / 'test.csv', index=False)
    train_fold(TrainConfig(data_dir=str(data), runs_dir=str(tmp_path / 'runs'), run_name='y', folds=2, epochs=1, image_size=32))
    predictor = Predictor.from_run('y', runs_dir=tmp_path / 'runs')
    assert predictor.year_fill == float(pd.read_csv(data / 'train.csv')['year'].median())
    movie = test.iloc[0]
    result = predictor.predict(data / 'test' / f'{movie.id}.jpg', title_array=data / 'test_w2v' / f'{movie.id}.npy')
    written = pd.read_csv(tmp_path / 'runs' / 'y' / 'fold1' / 'test_probs.csv').set_index('id').loc[movie.id, DEMO_GENRES]
    assert np.allclose(list(result['probabilities'].values()), written, atol=1e-5)


def test_bf16_autocast_gives_the_fp32_numbers_to_bf16_rounding(run):
    "Prediction (and evaluation, through the same predict_probs) under bf16 autocast stays within bf16's rounding of fp32."
    import torch
    from movie_genre.device import Runtime
    fp32 = Predictor.from_run('p', runs_dir=run.runs, runtime=Runtime(torch.device('cpu')))
    bf16 = Predictor.from_run('p', runs_dir=run.runs, runtime=Runtime(torch.device('cpu'), torch.bfloat16))
    rows = [dict(poster=str(run.data / 'test' / f'{i}.jpg'), title_array=str(run.data / 'test_w2v' / f'{i}.npy')) for i in run.test.id]
    a, b = (p.predict_table(rows, progress=False)[DEMO_GENRES].to_numpy() for p in (fp32, bf16))
    assert 0 < np.abs(a - b).max() < 0.02, np.abs(a - b).max()


def test_title_text_hashing_is_the_same_in_every_process():
    "The n-gram hash is CRC-32, not Python's hash(), whose salt changes with each process."
    from movie_genre.data import title_text_ids
    titles = ['The Night House', "Don't Look Up 2", 'Zorblax II']
    here = title_text_ids(titles, 65536).tolist()
    code = f'from movie_genre.data import title_text_ids; print(title_text_ids({titles!r}, 65536).tolist())'
    for salt in ('1', '2'):
        out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env={**os.environ, 'PYTHONHASHSEED': salt})
        assert eval(out.stdout) == here, out.stderr[-500:]


def test_a_title_text_model_predicts_a_new_movie_from_its_title_alone(tmp_path, monkeypatch):
    monkeypatch.setenv('MOVIE_GENRE_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setattr(Predictor, 'default_vectors', property(lambda self: None))  # no word vectors anywhere
    data = make_demo(tmp_path / 'data', n_train=60, n_test=8)
    for title_input in ('text', 'both'):
        train_fold(TrainConfig(data_dir=str(data), runs_dir=str(tmp_path / 'runs'), run_name=title_input, folds=2, epochs=1,
                               image_size=32, title_input=title_input, text_buckets=4096))
        predictor = Predictor.from_run(title_input, runs_dir=tmp_path / 'runs')
        assert predictor.uses_title_text and predictor.uses_title == (title_input == 'both')
        movie = pd.read_csv(data / 'test.csv').iloc[0]
        poster = data / 'test' / f'{movie.id}.jpg'
        written = pd.read_csv(tmp_path / 'runs' / title_input / 'fold1' / 'test_probs.csv').set_index('id').loc[movie.id, DEMO_GENRES]
        array = data / 'test_w2v' / f'{movie.id}.npy' if title_input == 'both' else None
        result = predictor.predict(poster, movie.title, title_array=array, year=movie.year)
        assert np.allclose(list(result['probabilities'].values()), written, atol=1e-5), title_input
        alone = predictor.predict(poster, movie.title, year=movie.year)  # no vectors, no array: the text still counts
        untitled = predictor.predict(poster, year=movie.year)
        assert alone['probabilities'] != untitled['probabilities'] and 'no title' in untitled['notes'][0]


def test_a_tfidf_run_and_ensembles_predict_as_they_were_evaluated(run):
    from movie_genre.ensemble import load_ensemble
    from movie_genre.predict import EnsemblePredictor, TfidfPredictor, load_predictor
    from movie_genre.tfidf import TfidfConfig, train_tfidf_fold
    for k in (1, 2): train_tfidf_fold(TfidfConfig(fold=k, folds=2, data_dir=str(run.data), runs_dir=str(run.runs), run_name='t'))
    movie = run.test.iloc[0]
    poster, array = run.data / 'test' / f'{movie.id}.jpg', run.data / 'test_w2v' / f'{movie.id}.npy'
    def written(name):
        return np.mean([pd.read_csv(run.runs / name / f'fold{k}' / 'test_probs.csv').set_index('id').loc[movie.id, DEMO_GENRES]
                        for k in (1, 2)], axis=0)
    tfidf = load_predictor('t', run.runs)
    assert isinstance(tfidf, TfidfPredictor)
    assert np.allclose(list(tfidf.predict(poster, movie.title, year=movie.year)['probabilities'].values()), written('t'), atol=1e-6)
    mean = load_predictor('p,t', run.runs)
    assert isinstance(mean, EnsemblePredictor)
    result = mean.predict(poster, movie.title, title_array=array, year=movie.year)
    assert np.allclose(list(result['probabilities'].values()), (written('p') + written('t')) / 2, atol=1e-5)
    assert 1 <= len(result['genres']) <= 3
    stacked = load_predictor('p,t', run.runs, stack=True)
    expected = load_ensemble('p,t', run.runs, stack=True, verbose=False).test_probs.set_index('id').loc[movie.id, DEMO_GENRES]
    got = stacked.predict(poster, movie.title, title_array=array, year=movie.year)['probabilities']
    assert np.allclose(list(got.values()), expected, atol=1e-4)
    args = build_parser().parse_args(['predict', '--run-name', 'p,t', '--stack', '--runs-dir', str(run.runs), str(poster),
                                      '--title-array', str(array), '--title', movie.title])
    assert len(predict_cli(args)) == 1
    train_tfidf_fold(TfidfConfig(fold=1, folds=2, data_dir=str(run.data), runs_dir=str(run.runs), run_name='t1'))
    def fold1(name): return pd.read_csv(run.runs / name / 'fold1' / 'test_probs.csv').set_index('id').loc[movie.id, DEMO_GENRES]
    partial = load_predictor('p,t1', run.runs)  # the members share fold 1 only: p's fold 2 is no part of the ensemble
    got = partial.predict(poster, movie.title, title_array=array, year=movie.year)['probabilities']
    assert np.allclose(list(got.values()), (fold1('p') + fold1('t1')) / 2, atol=1e-5)
    assert np.allclose(load_ensemble('p,t1', run.runs, verbose=False).test_probs.set_index('id').loc[movie.id, DEMO_GENRES],
                       (fold1('p') + fold1('t1')) / 2)


def tfidf_run(run, name='t'):
    "A TF-IDF run of two folds beside the network run 'p' (left alone when already trained)."
    from movie_genre.tfidf import TfidfConfig, train_tfidf_fold
    for k in (1, 2): train_tfidf_fold(TfidfConfig(fold=k, folds=2, data_dir=str(run.data), runs_dir=str(run.runs), run_name=name))


def test_a_bad_year_fails_its_row_alone_in_every_predictor(run, capsys):
    "One bad year in a batch is that row's error, named, for a network, a TF-IDF run, a blend and a stack; the others are predicted."
    from movie_genre.predict import load_predictor
    tfidf_run(run)
    movies = run.test.head(4)
    rows = pd.DataFrame({'poster': [str(run.data / 'test' / f'{i}.jpg') for i in movies.id], 'title': movies.title.tolist(),
                         'title_array': [str(run.data / 'test_w2v' / f'{i}.npy') for i in movies.id],
                         'year': [movies.year.iloc[0], 'soon', None, 0]})  # 0 for "unknown": no release year, read as unknown
    for spec, stack in (('p', False), ('t', False), ('p,t', False), ('p,t', True)):
        predictor = load_predictor(spec, run.runs, stack=stack)
        capsys.readouterr()
        table = predictor.predict_table(rows, progress=False)
        assert "the year must be a number, not 'soon'" in table.error[1] and pd.isna(table.Drama[1]), (spec, table.error[1])
        assert list(table.error[[0, 2, 3]]) == ['', '', ''] and all(table.genres[[0, 2, 3]]), spec
        said = capsys.readouterr().out
        assert '1 of 4 movies could not be predicted' in said and 'row 1 (' in said, (spec, said)
        alone = predictor.predict_table(rows.iloc[[0, 2]], progress=False)  # the bad row changes nothing for the others
        assert np.allclose(alone[DEMO_GENRES].to_numpy(np.float64), table.loc[[0, 2], DEMO_GENRES].to_numpy(np.float64)), spec
        assert 'no year' in table.notes[2] and table.year[2] == predictor.year_fill, spec
        assert "the year '0' is no release year (1870 to 2100)" in table.notes[3] and table.year[3] == predictor.year_fill, spec


def test_predict_exits_1_when_a_row_fails_after_writing_the_others(run, tmp_path, capsys):
    from movie_genre.cli import main
    first = run.test.id[0]
    pd.DataFrame({'poster': [f'{first}.jpg', 'missing.jpg'], 'title_array': [str(run.data / 'test_w2v' / f'{first}.npy')] * 2}
                 ).to_csv(run.data / 'test' / 'movies.csv', index=False)  # poster paths relative to the CSV's folder
    out = tmp_path / 'pred.csv'
    with pytest.raises(SystemExit) as exit:
        main(['predict', '--run-name', 'p', '--runs-dir', str(run.runs), str(run.data / 'test' / 'movies.csv'), '--out', str(out)])
    written = pd.read_csv(out, keep_default_na=False)
    assert exit.value.code == 1 and len(written) == 2 and written.error[0] == '' and 'no poster file' in written.error[1]
    assert f'1 predictions written to {out} (1 of 2 rows failed: see their error column)' in capsys.readouterr().out
    (run.data / 'test' / 'movies.csv').unlink()


def test_the_competition_csv_is_predicted_as_training_predicted_it(run):
    "The data's own test.csv (id,path,w2v_path,title,year; Kaggle paths resolved under the CSV's folder) gives the test_probs.csv numbers, ids kept."
    tfidf_run(run)
    from movie_genre.predict import load_predictor
    for name in ('p', 't'):
        table = predict_files(load_predictor(name, run.runs), run.data / 'test.csv', progress=False)
        written = np.mean([pd.read_csv(run.runs / name / f'fold{k}' / 'test_probs.csv').set_index('id').loc[run.test.id, DEMO_GENRES]
                           for k in (1, 2)], axis=0)
        assert list(table.columns[:2]) == ['id', 'poster'] and table['id'].tolist() == run.test.id.tolist(), name
        assert (table.error == '').all() and np.allclose(table[DEMO_GENRES].to_numpy(np.float64), written, atol=1e-5), name


def test_explain_on_an_ensemble_titles_the_maps_with_the_ensemble_probabilities(run, tmp_path, monkeypatch):
    import movie_genre.predict as predict_module
    from movie_genre.predict import load_predictor
    tfidf_run(run)
    shown, draw = [], predict_module._explanation_figure
    monkeypatch.setattr(predict_module, '_explanation_figure', lambda image, maps, result, name: shown.append(result) or draw(image, maps, result, name))
    movie = run.test.iloc[0]
    poster, array = run.data / 'test' / f'{movie.id}.jpg', run.data / 'test_w2v' / f'{movie.id}.npy'
    stacked = load_predictor('p,t', run.runs, stack=True)
    table = predict_files(stacked, poster, title=movie.title, title_array=array, year=movie.year, explain_dir=tmp_path)
    ensemble = {g: table[g][0] for g in DEMO_GENRES}
    member = stacked.members[0].predict(poster, movie.title, array, movie.year)['probabilities']
    assert len(shown) == 1 and shown[0]['probabilities'] == pytest.approx(ensemble) and shown[0]['probabilities'] != pytest.approx(member)
    assert (tmp_path / f'{movie.id}.gradcam.png').is_file()
