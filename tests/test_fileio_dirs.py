"""replacing_dir: a folder is written beside its target and swapped in whole, or not at all (real folders)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgefs.fileio import replacing_dir


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative posix path -> text)."""
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_new_folder_appears_complete_and_nothing_else_is_left(tmp_path: Path) -> None:
    final = tmp_path / "sub" / "set"  # the parent is created too
    with replacing_dir(final) as tmp:
        assert tmp.is_dir() and tmp.parent == final.parent and tmp.name.startswith(".set.")
        assert not final.exists()  # not visible while it is written
        (tmp / "a" / "b").mkdir(parents=True)
        (tmp / "a" / "b" / "x.txt").write_text("new")
    assert tree(final) == {"a/b/x.txt": "new"}
    assert os.listdir(final.parent) == ["set"]


def test_success_replaces_an_existing_folder(tmp_path: Path) -> None:
    final = tmp_path / "set"
    (final / "old-only").mkdir(parents=True)
    (final / "old-only" / "y.txt").write_text("old")
    (final / "manifest.json").write_text("old manifest")
    with replacing_dir(final) as tmp:
        (tmp / "manifest.json").write_text("new manifest")
    assert tree(final) == {"manifest.json": "new manifest"}  # the old files are gone, not merged
    assert os.listdir(tmp_path) == ["set"]  # neither the temporary nor the old folder is left


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_an_exception_leaves_the_old_folder_untouched_and_no_temporary(tmp_path: Path,
                                                                        error: BaseException) -> None:
    final = tmp_path / "set"
    final.mkdir()
    (final / "manifest.json").write_text("old manifest")
    before = tree(final)
    with pytest.raises(type(error)), replacing_dir(final) as tmp:
        (tmp / "manifest.json").write_text("half")
        (tmp / "part").mkdir()
        raise error
    assert tree(final) == before
    assert os.listdir(tmp_path) == ["set"]


def test_an_exception_with_no_old_folder_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad image"), replacing_dir(tmp_path / "set") as tmp:
        (tmp / "x").write_text("half")
        raise ValueError("bad image")
    assert os.listdir(tmp_path) == []


def test_a_link_in_the_way_is_replaced_and_its_target_kept(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    link = tmp_path / "set"
    link.symlink_to(target)
    with replacing_dir(link) as tmp:
        (tmp / "new.txt").write_text("new")
    assert not link.is_symlink() and tree(link) == {"new.txt": "new"}
    assert tree(target) == {"keep.txt": "keep"}  # the link went, not what it pointed to
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "set"]


def test_a_failed_swap_puts_the_old_folder_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new folder cannot be renamed in (e.g. the file system refuses): the old one is restored."""
    final = tmp_path / "set"
    final.mkdir()
    (final / "manifest.json").write_text("old manifest")
    real_replace = os.replace

    def refuse_new(src: str | Path, dst: str | Path) -> None:
        if Path(src).name.startswith(".set.partial-") and not Path(src).name.endswith("-old"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", refuse_new)
    with pytest.raises(OSError, match="No space left"), replacing_dir(final) as tmp:
        (tmp / "manifest.json").write_text("new manifest")
    assert tree(final) == {"manifest.json": "old manifest"}
    assert os.listdir(tmp_path) == ["set"]
