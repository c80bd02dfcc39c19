"""Atomic checkpoint directories: manifest, pointer, pruning, corruption detection."""

import pytest

from diffscale.engine import checkpoint as ckpt


def make(work_dir, step, keep=2, payload=b"x" * 1000):
    final = ckpt.checkpoint_dir(work_dir, step)
    tmp = ckpt.temp_dir(final)
    tmp.mkdir(parents=True)
    (tmp / "model.pt").write_bytes(payload)
    (tmp / "sub").mkdir()
    (tmp / "sub" / "shard.bin").write_bytes(payload[::-1])
    ckpt.finalize(tmp, final, work_dir, keep)
    return final


def test_finalize_points_and_prunes(tmp_path):
    for step in (10, 20, 30):
        make(tmp_path, step)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["iter_0000030", "iter_0000020"]  # keep=2
    assert (tmp_path / "last_checkpoint").read_text().strip() == "checkpoints/iter_0000030"  # relative
    assert ckpt.verify(ckpt.checkpoint_dir(tmp_path, 30)) is None


def test_unfinished_temp_dir_is_never_chosen(tmp_path):
    make(tmp_path, 10)
    tmp = ckpt.temp_dir(ckpt.checkpoint_dir(tmp_path, 20))
    tmp.mkdir()
    (tmp / "model.pt").write_bytes(b"half")  # killed mid-save: never renamed
    assert ckpt.resolve_resume(tmp_path, "auto").name == "iter_0000010"


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_damaged_newest_falls_back_with_warning(tmp_path, caplog, damage):
    make(tmp_path, 10)
    newest = make(tmp_path, 20)
    target = newest / "sub" / "shard.bin"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[500] ^= 0xFF  # same size, different content: only the CRC notices
        target.write_bytes(bytes(data))
    elif damage == "delete":
        target.unlink()
    else:
        (newest / ckpt.MANIFEST).write_text("{not json")
    assert ckpt.verify(newest) is not None
    import logging

    logging.getLogger("diffscale").propagate = True
    with caplog.at_level("WARNING", logger="diffscale"):
        chosen = ckpt.resolve_resume(tmp_path, "auto")
    assert chosen.name == "iter_0000010"
    assert "iter_0000020 is incomplete or corrupted" in caplog.text


def test_explicit_bad_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        ckpt.resolve_resume(tmp_path, str(tmp_path / "nowhere"))


def test_nothing_to_resume(tmp_path):
    assert ckpt.resolve_resume(tmp_path, "auto") is None


def test_explicit_good_path_is_used_even_if_not_newest(tmp_path):
    older = make(tmp_path, 10)
    make(tmp_path, 20)
    assert ckpt.resolve_resume(tmp_path, str(older)) == older.resolve()


# ---------------------------------------------------------------------------------------------- pointers
def test_a_copied_work_dir_resumes_from_its_own_checkpoints(tmp_path):
    """The pointer is relative: in a copy whose newest checkpoint was removed, resume falls back inside the copy,
    never to the original folder (it used to resume from /original/checkpoints/iter_0000020)."""
    import shutil

    original = tmp_path / "original"
    make(original, 10)
    make(original, 20)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    shutil.rmtree(copy / "checkpoints" / "iter_0000020")
    chosen = ckpt.resolve_resume(copy, "auto")
    assert chosen == (copy / "checkpoints" / "iter_0000010").resolve()


@pytest.mark.parametrize("pointer", [
    b"\xff\xfe\x00binary",  # not text (a UnicodeDecodeError)
    b"../other/checkpoints/iter_0000020\n",  # leaves the work_dir
    b"/etc\n",  # absolute, outside
    b"checkpoints/not_a_checkpoint\n",
    b"checkpoints/iter_0000020\ncheckpoints/iter_0000010\n",  # two lines
])
def test_a_bad_pointer_is_ignored_with_a_warning_and_the_scan_decides(tmp_path, caplog, pointer):
    import logging

    make(tmp_path, 10)
    outside = tmp_path / "other"
    make(outside, 20)  # a complete checkpoint the escaping pointer names
    (tmp_path / ckpt.LAST).write_bytes(pointer)
    logging.getLogger("diffscale").propagate = True
    with caplog.at_level("WARNING", logger="diffscale"):
        chosen = ckpt.resolve_resume(tmp_path, "auto")
    assert chosen == (tmp_path / "checkpoints" / "iter_0000010").resolve()
    assert str(tmp_path / ckpt.LAST) in caplog.text


def test_an_absolute_pointer_inside_the_work_dir_is_still_read(tmp_path):
    make(tmp_path, 10)
    make(tmp_path, 20)
    (tmp_path / ckpt.LAST).write_text(str(tmp_path.resolve() / "checkpoints" / "iter_0000010") + "\n")  # older runs
    assert ckpt.read_pointer(tmp_path) == (tmp_path / "checkpoints" / "iter_0000010").resolve()


# ---------------------------------------------------------------------------------------------- strict manifests
def _rewrite_manifest(ckpt_dir, manifest) -> None:
    import json

    (ckpt_dir / ckpt.MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(("case", "reason"), [
    ("list", "is not a non-empty JSON object of files"),
    ("empty", "is not a non-empty JSON object of files"),  # `{}` used to pass with model.pt truncated
    ("unlisted", "is not in the manifest"),
    ("entry_not_a_dict", "is not {\"bytes\": int, \"crc32\": int}"),
    ("escape", "does not name a file of the checkpoint"),
    ("binary", "is unreadable"),
])
def test_verify_is_strict(tmp_path, case, reason):
    import json

    final = make(tmp_path, 10)
    manifest = json.loads((final / ckpt.MANIFEST).read_text())
    if case == "list":
        _rewrite_manifest(final, list(manifest))
    elif case == "empty":
        (final / "model.pt").write_bytes(b"x" * 10)  # truncated
        _rewrite_manifest(final, {})
    elif case == "unlisted":
        del manifest["model.pt"]
        _rewrite_manifest(final, manifest)
    elif case == "entry_not_a_dict":
        manifest["model.pt"] = [1000, 0]
        _rewrite_manifest(final, manifest)
    elif case == "escape":
        manifest["../../outside"] = {"bytes": 1, "crc32": 0}
        _rewrite_manifest(final, manifest)
    else:
        (final / ckpt.MANIFEST).write_bytes(b"\xff\xfe{")
    assert reason in (ckpt.verify(final) or "")
    with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
        ckpt.require_complete(final)
