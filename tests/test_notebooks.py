"""Every notebook in nbs/ through nbdev's own test runner (what `nbdev_test` does), one pytest test each,
so that CI names the notebook that failed and ends with pytest's `N passed`."""
from pathlib import Path

import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook  # renamed so pytest does not collect it as a test

NBS = Path(__file__).resolve().parents[1] / 'nbs'
NOTEBOOKS = sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith(('_', '.')))


def test_notebooks_found():
    assert len(NOTEBOOKS) >= 1, f'no notebooks in {NBS}'


@pytest.mark.parametrize('notebook', NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook(notebook, monkeypatch):
    monkeypatch.setenv('IN_TEST', '1')  # test_nb sets it for good; this undoes it afterwards, so later subprocesses run for real
    skip_flags = get_config().tst_flags.split()
    ok, seconds = run_notebook(notebook, skip_flags=skip_flags, showerr=True)
    assert ok, f'{notebook.name} failed under nbdev_test (traceback above)'
