"""The data layer on real files: every kind of bad row or file `load_split` must catch (or convert), the poster
cache's reuse and rebuild, loader reproducibility, and the folds, on posters8 when it sits beside the repository."""
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import movie_genre.data as data_module
from movie_genre.data import (DataError, MovieData, MovieDataset, load_split, make_folds, make_loader, parse_genres,
                              read_poster, train_transforms)
from movie_genre.demo import make_demo

POSTERS8 = Path(__file__).resolve().parents[1] / '../shared/data/posters8'  # the shared data beside the clone
N_TRAIN, DIM, SIZE = 24, 8, 32  # posters cached at 48x32


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    "Every test caches into its own temporary folder, never into the repository."
    monkeypatch.setenv('MOVIE_GENRE_CACHE', str(tmp_path / 'cache'))
    return tmp_path / 'cache'


@pytest.fixture(scope='module')
def pristine(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp('pristine') / 'demo', n_train=N_TRAIN, n_test=6, dim=DIM)


@pytest.fixture
def demo(pristine, tmp_path):
    "A fresh copy of the tiny demo set, free to break."
    return Path(shutil.copytree(pristine, tmp_path / 'demo'))


def load(demo, split='train', **kwargs):
    return load_split(demo, split, image_size=SIZE, workers=1, **kwargs)


# Each breaker damages row `i` of `table` (train.csv, saved by the caller) or its files, and returns the file the
# error must name (None when the problem is in the CSV itself).
def poster(demo, table, i): return demo / 'train' / f'{table.id[i]}.jpg'
def title_file(demo, table, i): return demo / 'train_w2v' / f'{table.id[i]}.npy'

def corrupt_bytes(demo, table, i):
    poster(demo, table, i).write_bytes(np.random.default_rng(i).integers(0, 256, 5000, np.uint8).tobytes())
    return poster(demo, table, i)

def zero_byte(demo, table, i):
    poster(demo, table, i).write_bytes(b'')
    return poster(demo, table, i)

def truncated_jpeg(demo, table, i):
    data = poster(demo, table, i).read_bytes()
    poster(demo, table, i).write_bytes(data[:len(data) * 2 // 3])
    return poster(demo, table, i)

def missing_poster(demo, table, i):
    poster(demo, table, i).unlink()
    return poster(demo, table, i)

def missing_array(demo, table, i):
    title_file(demo, table, i).unlink()
    return title_file(demo, table, i)

def saves_array(array):
    def breaker(demo, table, i):
        np.save(title_file(demo, table, i), array)
        return title_file(demo, table, i)
    return breaker

def sets_genres(text):
    def breaker(demo, table, i):
        table.loc[i, 'genres'] = text
    return breaker

def sets_year(value):
    def breaker(demo, table, i):
        table['year'] = table['year'].astype(object)
        table.loc[i, 'year'] = value
    return breaker

def duplicate_id(demo, table, i):
    table.loc[i, 'id'] = table.id[i - 1]  # row i-1 keeps its id: both rows are bad

nan_array = np.zeros((15, DIM), np.float32); nan_array[0, 0] = np.nan
inf_array = np.zeros((15, DIM), np.float32); inf_array[1, 2] = np.inf
BAD = {  # case: (breaker, the kind of problem the message names)
    'corrupt bytes': (corrupt_bytes, 'unreadable poster'),
    'zero-byte poster': (zero_byte, 'empty poster file'),
    'truncated JPEG': (truncated_jpeg, 'unreadable poster'),
    'missing poster': (missing_poster, 'missing poster'),
    'missing array': (missing_array, 'missing title array'),
    'other D': (saves_array(np.zeros((15, DIM + 1), np.float32)), 'title array of the wrong shape'),
    '1-D array': (saves_array(np.zeros(DIM, np.float32)), 'title array of the wrong shape'),
    '3-D array': (saves_array(np.zeros((1, 15, DIM), np.float32)), 'title array of the wrong shape'),
    'NaN array': (saves_array(nan_array), 'title array holds NaN or inf'),
    'inf array': (saves_array(inf_array), 'title array holds NaN or inf'),
    'unknown genre': (sets_genres("['Drama', 'Westren']"), "unknown genre (['Westren']"),
    'malformed genres': (sets_genres('Drama|Comedy'), 'malformed genres'),
    'no genre': (sets_genres('[]'), 'no genre'),
    'year not a number': (sets_year('soon'), "bad year ('soon')"),
    'infinite year': (sets_year('inf'), "bad year ('inf')"),
    'duplicate id': (duplicate_id, 'duplicate id'),
}


def rgb_of(demo, table, i): return read_poster(poster(demo, table, i))

def png_named_jpg(demo, table, i):
    Image.fromarray(rgb_of(demo, table, i)).save(poster(demo, table, i), 'PNG')

def cmyk_jpeg(demo, table, i):
    Image.fromarray(rgb_of(demo, table, i)).convert('CMYK').save(poster(demo, table, i), 'JPEG', quality=95)

def greyscale(demo, table, i):
    Image.fromarray(rgb_of(demo, table, i)).convert('L').save(poster(demo, table, i), 'JPEG', quality=95)

def rgba_png(demo, table, i):
    rgb = rgb_of(demo, table, i)
    alpha = np.full(rgb.shape[:2], 255, np.uint8); alpha[: rgb.shape[0] // 2] = 0  # top half transparent
    png = poster(demo, table, i).with_suffix('.png')
    Image.fromarray(np.dstack([rgb, alpha])).save(png, 'PNG')
    poster(demo, table, i).unlink()
    table.loc[i, 'path'] = table.path[i].replace('.jpg', '.png')

CONVERTIBLE = {'PNG named .jpg': png_named_jpg, 'CMYK JPEG': cmyk_jpeg, 'greyscale': greyscale, 'RGBA PNG': rgba_png}


def break_rows(demo, breakers: list) -> tuple[pd.DataFrame, dict]:
    "Apply `breakers` to rows 1, 2, ... of train.csv; the original table and `{row: file named or None}`."
    table = pd.read_csv(demo / 'train.csv')
    original, files = table.copy(), {}
    for row, breaker in enumerate(breakers, start=1): files[row] = breaker(demo, table, row)
    table.to_csv(demo / 'train.csv', index=False)
    return original, files


@pytest.mark.parametrize('case', BAD)
def test_strict_names_the_bad_row_and_file(demo, case):
    breaker, kind = BAD[case]
    original, files = break_rows(demo, [breaker])
    with pytest.raises(DataError) as error:
        load(demo)
    message = str(error.value)
    bad_rows = [0, 1] if case == 'duplicate id' else [1]  # a duplicated id makes both of its rows bad
    assert f'{len(bad_rows)} of {N_TRAIN} rows of {demo / "train.csv"} are bad' in message
    assert kind in message and "on_bad='skip'" in message
    for row in bad_rows: assert f'row {row} (line {row + 2}, id {original.id[bad_rows[0]]})' in message
    if files[1] is not None: assert str(files[1]) in message


def test_a_year_that_is_no_release_year_keeps_its_movie_and_is_said(demo, capsys):
    "A typo (19995) or 0 written for unknown is read as a missing year (the fill year), not a bad row: the poster and title stay."
    original, _ = break_rows(demo, [sets_year(0), sets_year(19995)])
    data = load(demo)  # strict: no error
    assert data.ids.tolist() == original.id.tolist() and data.year[1] == data.year[2] == data.year_fill
    said = capsys.readouterr().out
    assert f"2 year(s) of {demo / 'train.csv'} are no release year (1870 to 2100" in said, said
    assert f"row 1 (line 3, id {original.id[1]}): '0'; row 2 (line 4, id {original.id[2]}): '19995'" in said, said


def test_convertible_images_are_no_errors_and_load_as_rgb(pristine, demo):
    original, _ = break_rows(demo, list(CONVERTIBLE.values()))
    data = load(demo)  # strict: none of them is an error
    assert data.ids.tolist() == original.id.tolist()
    converted, clean = np.asarray(data.images, int), np.asarray(load(pristine).images, int)
    png, cmyk, grey, rgba = (converted[row] for row in (1, 2, 3, 4))
    assert np.array_equal(png, clean[1])  # a PNG under a .jpg name: lossless
    assert np.abs(cmyk - clean[2]).mean() < 8  # CMYK JPEG: lossy
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert np.abs(grey[..., 0] - clean[3] @ [0.299, 0.587, 0.114]).mean() < 8
    assert (rgba[:20] == 255).all()  # the transparent top half, on white
    assert np.abs(rgba[28:] - clean[4][28:]).mean() < 2  # the opaque bottom half


def all_broken(demo):
    "Every bad case on its own row, after the convertible images (which are fine); the original table, files, bad rows."
    breakers = list(CONVERTIBLE.values()) + [breaker for breaker, _ in BAD.values()]
    original, files = break_rows(demo, breakers)
    first_bad = 1 + len(CONVERTIBLE)
    return original, files, list(range(first_bad, first_bad + len(BAD)))  # the duplicate's twin is the row before


def test_strict_raises_one_error_naming_every_bad_row(demo, monkeypatch):
    original, files, bad_rows = all_broken(demo)
    monkeypatch.setattr(data_module, 'SHOWN_PROBLEMS', 100)
    with pytest.raises(DataError) as error:
        load(demo)
    message = str(error.value)
    assert f'{len(bad_rows)} of {N_TRAIN} rows' in message
    for row in bad_rows: assert f'row {row} (line {row + 2}, id ' in message
    for row in range(1, 1 + len(CONVERTIBLE)): assert f'row {row} (line' not in message
    for file in files.values():
        if file is not None: assert str(file) in message
    for _, kind in BAD.values(): assert kind in message


def test_strict_shows_the_first_few_then_a_count(demo):
    _, _, bad_rows = all_broken(demo)
    with pytest.raises(DataError) as error:
        load(demo)
    message = str(error.value)
    shown = data_module.SHOWN_PROBLEMS
    assert f'row {bad_rows[shown - 1]} (line ' in message and f'row {bad_rows[shown]} (line ' not in message
    assert f'... and {len(bad_rows) - shown} more bad rows' in message


def test_skip_keeps_exactly_the_good_rows_and_reports_the_bad(pristine, demo, tmp_path, capsys):
    original, _, bad_rows = all_broken(demo)
    data = load(demo, on_bad='skip', report_dir=tmp_path / 'run')
    good = [row for row in range(N_TRAIN) if row not in bad_rows]
    assert data.ids.tolist() == original.id[good].tolist() and len(data.images) == len(good) == N_TRAIN - len(bad_rows)
    labels = [[g in parse_genres(original.genres[row]) for g in data.genres] for row in good]
    assert np.array_equal(data.labels, np.array(labels, np.float32))
    clean = np.asarray(load(pristine).images)
    untouched = [k for k, row in enumerate(good) if row not in range(1, 1 + len(CONVERTIBLE))]
    assert np.array_equal(np.asarray(data.images)[untouched], clean[np.array(good)[untouched]])
    report = pd.read_csv(tmp_path / 'run' / 'bad_rows_train.csv')
    broken_ids = pd.read_csv(demo / 'train.csv')['id']
    assert report['row'].tolist() == bad_rows and report['id'].tolist() == broken_ids[bad_rows].tolist()
    assert f'skipping {len(bad_rows)} of {N_TRAIN} rows' in capsys.readouterr().out


def test_bad_path_and_id_are_rows_too(demo):
    table = pd.read_csv(demo / 'train.csv')
    table['id'] = table['id'].astype(object)
    table.loc[1, 'id'], table.loc[2, 'path'] = 'abc', '13.jpg'
    table.to_csv(demo / 'train.csv', index=False)
    with pytest.raises(DataError) as error:
        load(demo)
    message = str(error.value)
    assert "row 1 (line 3, id 'abc'): id is not an integer" in message and "row 2" in message and "bad path ('13.jpg')" in message


@pytest.mark.parametrize('content', ['', 'id,path,w2v_path,title,year,genres\n'], ids=['empty file', 'header only'])
def test_empty_csv_is_a_clear_error(demo, content):
    (demo / 'train.csv').write_text(content)
    with pytest.raises(DataError, match='train.csv (is empty|has a header but no rows)'):
        load(demo)


def test_empty_sample_submission_is_a_clear_error(demo):
    (demo / 'sample_submission.csv').write_text('')
    with pytest.raises(DataError, match='sample_submission.csv is empty'):
        load(demo, 'test')


def test_test_ids_must_be_those_of_sample_submission(demo):
    test = pd.read_csv(demo / 'test.csv')
    renamed = test.copy()
    renamed.loc[0, 'id'] = 999999
    renamed.to_csv(demo / 'test.csv', index=False)
    for on_bad in ('raise', 'skip'):  # a missing submission id cannot be fixed by dropping rows
        with pytest.raises(DataError) as error:
            load(demo, 'test', on_bad=on_bad)
        message = str(error.value)
        assert f'1 id(s) of {demo / "sample_submission.csv"} are not in {demo / "test.csv"}: {test.id[0]}' in message
    assert 'row 0 (line 2, id 999999): id not in sample_submission.csv' in message
    extra = pd.concat([test, renamed.iloc[[0]]], ignore_index=True)  # every submission id, and one more
    extra.to_csv(demo / 'test.csv', index=False)
    with pytest.raises(DataError, match='row 6 \\(line 8, id 999999\\): id not in sample_submission.csv'):
        load(demo, 'test')
    assert load(demo, 'test', on_bad='skip').ids.tolist() == test.id.tolist()


def cache_files(cache) -> list[Path]: return sorted((cache / 'posters').glob('*-train-*.npy'))


def test_cache_is_reused_when_nothing_changed(demo, cache, monkeypatch):
    first = load(demo)
    [file] = cache_files(cache)
    stamp = file.stat().st_mtime_ns
    def no_decoding(args): raise AssertionError('the cache was rebuilt')
    monkeypatch.setattr(data_module, '_poster_or_error', no_decoding)
    second = load(demo)
    assert cache_files(cache) == [file] and file.stat().st_mtime_ns == stamp
    assert np.array_equal(np.asarray(first.images), np.asarray(second.images))


def test_cache_is_rebuilt_when_a_poster_changes(demo, cache):
    table = pd.read_csv(demo / 'train.csv')
    before = load(demo)
    [old] = cache_files(cache)
    changed = demo / 'train' / f'{table.id[3]}.jpg'
    st = changed.stat()
    red = np.zeros((230, 160, 3), np.uint8); red[..., 2] = 255  # BGR
    cv2.imwrite(str(changed), red)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old modification time
    after = load(demo)
    [new] = cache_files(cache)
    assert new != old and not old.exists()
    assert np.abs(np.asarray(after.images[3], int) - [255, 0, 0]).max() <= 3
    unchanged = [i for i in range(N_TRAIN) if i != 3]
    assert np.array_equal(np.asarray(after.images)[unchanged], np.asarray(before.images)[unchanged])


def test_loader_batches_are_the_same_with_workers(pristine):
    data = load(pristine)
    dataset = MovieDataset(data, transform=train_transforms(*data.images.shape[1:3]))
    def epoch(workers):
        loader = make_loader(dataset, batch_size=8, shuffle=True, seed=3, num_workers=workers)
        loader.sampler.set_epoch(2)
        return list(loader)
    for one, other in zip(epoch(0), epoch(2), strict=True):
        assert one.keys() == other.keys() and all(torch.equal(one[k], other[k]) for k in one)


def labels_only(data_dir: Path) -> MovieData:
    "The ids and genre labels of train.csv in `data_dir`, all that folds need (no posters decoded)."
    table = pd.read_csv(data_dir / 'train.csv')
    parsed = [parse_genres(text) for text in table['genres']]
    genres = sorted({g for gs in parsed for g in gs})
    labels = np.array([[g in gs for g in genres] for gs in parsed], np.float32)
    return MovieData(table, None, None, None, None, labels, genres)


def check_folds(data: MovieData, folds: pd.DataFrame, n_folds: int):
    assert folds['id'].tolist() == data.ids.tolist()  # every movie exactly once: folds cover all, disjoint
    members = [set(folds['id'][folds['fold'] == k]) for k in range(1, n_folds + 1)]
    assert all(members) and sum(map(len, members)) == len(data) and set().union(*members) == set(data.ids)


def test_folds_on_the_demo(pristine):
    data = labels_only(pristine)
    folds = make_folds(data, 4, seed=0)
    check_folds(data, folds, 4)
    assert folds.equals(make_folds(data, 4, seed=0))


@pytest.mark.skipif(not (POSTERS8 / 'train.csv').is_file(), reason=f'no posters8 data at {POSTERS8}')
def test_folds_on_posters8_keep_each_genre_share():
    data = labels_only(POSTERS8)
    folds = make_folds(data)
    check_folds(data, folds, 8)
    assert folds.equals(make_folds(data))
    overall = data.labels.mean(0)
    for k in range(1, 9):
        share = data.labels[folds['fold'].to_numpy() == k].mean(0)
        assert np.abs(share - overall).max() <= 0.02, (k, dict(zip(data.genres, share - overall)))


def test_skip_with_every_row_bad_raises(demo):
    table = pd.read_csv(demo / 'train.csv')
    table['genres'] = '[]'
    table.to_csv(demo / 'train.csv', index=False)
    with pytest.raises(DataError, match=f'{N_TRAIN} of {N_TRAIN} rows .* are bad \\(no genre: {N_TRAIN}\\)'):
        load(demo, on_bad='skip')
