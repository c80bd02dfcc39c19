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
    assert (tmp_path / "last_checkpoint").read_text().strip() == str(tmp_path.resolve() / "checkpoints/iter_0000030")
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
