"""Damaged records are found and named: ``prepare --check``, the checked read, and a JPEG that
decodes with only a warning. Every damage is done here, to real shard files of a prepared set."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from alexnet import prepare
from alexnet.data.packed import PackedSplit
from alexnet.data.records import CorruptRecord

from conftest import insert_before_eoi

BAD_LINE = re.compile(
    r"bad: corrupt record in split '(\w+)': shard (\S+), record (\d+) \(index (\d+)\), "
    r"source (\S+): (.+)"
)


def copy_set(prepared: Path, tmp_path: Path) -> Path:
    out = tmp_path / "prepared"
    shutil.copytree(prepared, out)
    return out


def record_bytes(root: Path, split: str) -> list[bytes]:
    """Every record of ``split`` as its shard file holds it now (read here, not by PackedSplit)."""
    meta = json.loads((root / "meta.json").read_text())
    shards = [(root / s).read_bytes() for s in meta["splits"][split]["shards"]]
    index = np.load(root / split / "index.npy")
    return [shards[s][o : o + n] for s, o, n in index[:, :3].tolist()]


def source_of(prepared: Path, shard: str, position: int) -> Path:
    """The source image of record ``position`` of a training ``shard``, found in the source
    tree: a unit holds one class folder's files in name order (``train/<label>-<chunk>.bin``)."""
    label = int(shard.removeprefix("train/").split("-")[0])
    folder = sorted((prepared.parent / "src" / "train").iterdir())[label]
    return sorted(folder.iterdir())[position]


def scribble(path: Path, offsets: list[int], seed: int = 0) -> None:
    """64 random bytes written into ``path`` at each offset, as a bad disk would."""
    rng = np.random.default_rng(seed)
    with open(path, "r+b") as f:
        for offset in offsets:
            f.seek(offset)
            f.write(rng.integers(0, 256, 64, dtype=np.uint8).tobytes())


def run_check(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[tuple], str]:
    code = prepare.main(["--check", str(root), "--workers", "2"])
    out = capsys.readouterr().out
    bad = [m.groups() for m in map(BAD_LINE.fullmatch, out.splitlines()) if m]
    return code, bad, out


def test_check_names_every_damaged_record_and_its_source(
    prepared_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_set(prepared_tiny, tmp_path)
    assert run_check(root, capsys)[0] == 0  # the copy is sound before the damage
    before = {s: record_bytes(root, s) for s in ("train", "val")}
    shard = root / "train" / "00001-000.bin"
    size = shard.stat().st_size
    scribble(shard, [size // 7, size // 2, size - 300])
    val_shard = sorted((root / "val").glob("*.bin"))[-1]
    with open(val_shard, "r+b") as f:  # an interrupted copy: the last 100 bytes are gone
        f.truncate(val_shard.stat().st_size - 100)
    after = {s: record_bytes(root, s) for s in ("train", "val")}
    changed = {
        (split, i)
        for split in after
        for i, (a, b) in enumerate(zip(before[split], after[split], strict=True))
        if a != b
    }
    assert len(changed) >= 3

    code, bad, out = run_check(root, capsys)
    assert code == 1 and "bad, in" in out
    assert {(split, int(index)) for split, _, _, index, _, _ in bad} == changed
    for split, shard_name, position, index, source, reason in bad:
        meta_shards = json.loads((root / "meta.json").read_text())["splits"][split]["shards"]
        shard_number = int(np.load(root / split / "index.npy")[int(index), 0])
        assert meta_shards[shard_number] == shard_name
        truncated = shard_name.startswith("val/")
        if truncated:  # a flat val/ folder: the file exists there (its order is the devkit's)
            assert Path(source).parent == prepared_tiny.parent / "src" / "val"
            assert Path(source).is_file()
        else:
            assert Path(source) == source_of(prepared_tiny, shard_name, int(position))
        assert ("truncated" if truncated else "checksum mismatch") in reason


def test_a_set_without_checksums_still_loads_and_is_checked_by_decoding(
    prepared_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_set(prepared_tiny, tmp_path)
    meta = json.loads((root / "meta.json").read_text())
    (root / "meta.json").write_text(json.dumps({**meta, "version": 1}))
    for split in ("train", "val"):
        index = np.load(root / split / "index.npy")
        np.save(root / split / "index.npy", index[:, :4])  # as prepare wrote it before
    code, bad, out = run_check(root, capsys)
    assert code == 0 and "carries no checksums" in out and "decoding every JPEG" in out

    split = PackedSplit(root, "train")
    shard, offset, _ = split.index[5, :3]
    scribble(split.shard_paths[shard], [int(offset)])  # the JPEG header of record 5
    code, bad, out = run_check(root, capsys)
    assert code == 1 and [int(b[3]) for b in bad] == [5] and "JPEG decoder" in bad[0][5]
    with pytest.raises(CorruptRecord, match="index 5"):
        PackedSplit(root, "train").image(5)


def test_the_checked_read_names_a_record_whose_bytes_changed(
    prepared_tiny: Path, tmp_path: Path
) -> None:
    root = copy_set(prepared_tiny, tmp_path)
    split = PackedSplit(root, "train")
    good = split.image(13).clone()
    shard, offset, length = split.index[13, :3]
    scribble(split.shard_paths[shard], [int(offset + length // 2)])
    split = PackedSplit(root, "train")
    found = zlib.crc32(bytes(split.raw(13).numpy()))
    with pytest.raises(CorruptRecord, match=f"CRC-32 {found:08x}, stored ") as caught:
        split.image(13)
    bad = caught.value.bad
    assert (bad.split, bad.index, bad.shard) == ("train", 13, "train/00001-000.bin")
    assert Path(bad.source) == source_of(prepared_tiny, bad.shard, bad.position)
    assert torch.equal(split.image(12), PackedSplit(prepared_tiny, "train").image(12))
    assert not torch.equal(decode_jpeg(split.raw(13)), good)  # the damage shows, unchecked


def test_a_jpeg_that_decodes_with_a_warning_is_named_as_corrupt(
    prepared_tiny: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    root = copy_set(prepared_tiny, tmp_path)
    data = insert_before_eoi(root, "val", 6, b"\x00" * 17)
    capfd.readouterr()
    plain = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB)
    assert plain.shape == (3, 256, 256)  # torchvision returns pixels: no exception, no warning
    said = capfd.readouterr().err
    assert "Corrupt JPEG data" in said and "extraneous bytes before marker 0xd9" in said

    split = PackedSplit(root, "val")
    assert split.read(6).numel() == len(data)  # its checksum matches: only the decoder can tell
    with pytest.raises(CorruptRecord, match="extraneous bytes before marker 0xd9") as caught:
        split.image(6)
    assert caught.value.bad.index == 6 and "JPEG decoder: Corrupt JPEG data" in str(caught.value)
    assert "Corrupt JPEG data" not in capfd.readouterr().err  # caught, not printed
    assert torch.equal(split.image(5), PackedSplit(prepared_tiny, "val").image(5))


# A thread that writes console lines (alexnet.log.info) while the main thread decodes clean JPEGs
# with the strict decoder, thread switches as often as CPython allows. A process of its own:
# under pytest's capture, sys.stderr does not write to descriptor 2.
TALK_WHILE_DECODING = """
import json, sys, threading, warnings
warnings.simplefilter("ignore")
import torch
from torchvision.io import encode_jpeg
from alexnet.data.records import DecodeError, decode_jpeg_strict
from alexnet.log import info
data = encode_jpeg(torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8), quality=90)
sys.setswitchinterval(1e-6)
stop, said = threading.Event(), [0]
def talk():
    while not stop.is_set():
        info(f"line {said[0]}")
        said[0] += 1
t = threading.Thread(target=talk)
t.start()
caught = []
for _ in range(3000):
    try:
        decode_jpeg_strict(data)
    except DecodeError as err:
        caught.append(str(err))
stop.set()
t.join()
print(json.dumps({"said": said[0], "caught": caught[:3], "errors": len(caught)}))
"""


def test_console_lines_of_another_thread_are_neither_warnings_nor_lost() -> None:
    out = subprocess.run(
        [sys.executable, "-c", TALK_WHILE_DECODING], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["errors"] == 0, result["caught"]
    assert result["said"] > 0
    assert out.stderr.splitlines() == [f"line {i}" for i in range(result["said"])]


# A Python warning raised while a clean JPEG decodes (as torchvision 0.29's deprecation notice is
# under -X dev or -W default): the decode stands, and the warning is shown.
WARN_WHILE_DECODING = """
import io, warnings
import torch
import torchvision.io
from PIL import Image
from alexnet.data.records import decode_jpeg_strict
real = torchvision.io.decode_jpeg
def decode_jpeg(*args, **kwargs):
    warnings.warn("a Python warning during the decode", UserWarning)
    return real(*args, **kwargs)
torchvision.io.decode_jpeg = decode_jpeg
warnings.simplefilter("always")
jpeg = io.BytesIO()
Image.new("RGB", (64, 48), (10, 200, 30)).save(jpeg, "JPEG")
data = torch.frombuffer(bytearray(jpeg.getvalue()), dtype=torch.uint8)
print([tuple(decode_jpeg_strict(data).shape) for _ in range(2)])
"""


def test_python_warnings_during_a_decode_are_shown_not_taken_for_the_decoders() -> None:
    out = subprocess.run(
        [sys.executable, "-c", WARN_WHILE_DECODING], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[(3, 48, 64), (3, 48, 64)]"
    assert out.stderr.count("UserWarning: a Python warning during the decode") == 2
