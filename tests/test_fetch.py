"""Local fetchers (folder, tar, embedded), image checks and the public-address rule."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fvlp_core.fetch import (
    EmbeddedFetcher,
    FetchRequest,
    FolderFetcher,
    TarFetcher,
    check_image,
    image_key,
    is_public_address,
)


def png_bytes(size: int = 8) -> bytes:
    """A PNG of noise: incompressible, so its byte size grows with ``size``."""
    pixels = np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def statuses(results) -> list[str]:
    return [r.status for r in results]


def test_check_image_accepts_images_and_names_the_problem_otherwise():
    assert check_image(png_bytes(), 10_000).status == "ok"
    not_image = check_image(b"<html>nope</html>", 10_000)
    assert not_image.status == "not_image" and "<html>" in not_image.error
    too_large = check_image(png_bytes(64), 100)
    assert too_large.status == "too_large" and "max 100" in too_large.error
    assert check_image(b"", 100).status == "not_image"


def test_folder_fetcher_keys_files_by_sample_id(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "1.png").write_bytes(png_bytes())
    (tmp_path / "sub" / "0002.jpg").write_bytes(png_bytes())  # leading zeros, nested folder
    (tmp_path / "3.png").write_bytes(png_bytes())
    (tmp_path / "3.jpg").write_bytes(png_bytes())  # two files for one id
    (tmp_path / "4.png").write_bytes(b"text, not pixels")
    (tmp_path / "5.png").write_bytes(png_bytes(256))
    (tmp_path / "6.json").write_text("{}")  # sidecars are not images
    (tmp_path / "+6.png").write_bytes(png_bytes())  # only plain digits name an id
    (tmp_path / "6_0.png").write_bytes(png_bytes())
    fetcher = FolderFetcher(tmp_path, max_bytes=2_000)
    results = fetcher.fetch([FetchRequest(i) for i in (1, 2, 3, 4, 5, 6)])
    assert statuses(results) == ["ok", "ok", "error", "not_image", "too_large", "not_found"]
    assert results[0].image == png_bytes()
    assert "3.jpg" in results[2].error and "3.png" in results[2].error
    assert "SAMPLE_ID 6" in results[5].error


def test_folder_fetcher_needs_an_existing_folder(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FolderFetcher(tmp_path / "nowhere", max_bytes=10)


def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_tar_fetcher_reads_members_and_refuses_unsafe_names(tmp_path: Path, mode: str):
    tar_path = tmp_path / "images" / ("images.tar" + (".gz" if mode == "w:gz" else ""))
    tar_path.parent.mkdir()
    with tarfile.open(tar_path, mode) as archive:
        add_member(archive, "batch/1.png", png_bytes())
        add_member(archive, "../2.png", png_bytes())
        add_member(archive, "/tmp/3.png", png_bytes())
        link = tarfile.TarInfo("4.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
        add_member(archive, "5.png", b"not an image")
        add_member(archive, "a/../../6.png", png_bytes())
    fetcher = TarFetcher(tar_path, max_bytes=10_000)
    results = fetcher.fetch([FetchRequest(i) for i in range(1, 8)])
    fetcher.close()
    assert statuses(results) == ["ok", "refused", "refused", "refused", "not_image", "refused", "not_found"]
    assert "path traversal" in results[1].error and "../2.png" in results[1].error
    assert "absolute" in results[2].error
    assert "not a regular file" in results[3].error
    # Nothing was extracted next to the archive or above it.
    assert sorted(p.name for p in tar_path.parent.iterdir()) == [tar_path.name]
    assert not (tmp_path / "2.png").exists() and not (tmp_path / "6.png").exists()


def _tar_blocks(members: list[tuple[str, bytes, int | None]]) -> bytes:
    """Raw tar bytes without the end-of-archive blocks; ``declared`` overrides a member's size."""
    out = b""
    for name, data, declared in members:
        info = tarfile.TarInfo(name)
        info.size = len(data) if declared is None else declared
        out += info.tobuf() + data + b"\0" * (-len(data) % 512)
    return out


TRUNCATIONS = {
    # the last member's data cut short
    "cut_member": lambda png: _tar_blocks([("1.png", png, None), ("2.png", png, None), ("3.png", png, None)])[:-300],
    # a header declaring 2 GiB and no data after it
    "huge_header": lambda png: _tar_blocks([("1.png", png, None), ("2.png", png, None), ("3.png", b"", 2**31)]),
}


@pytest.mark.parametrize("case", [*sorted(TRUNCATIONS), "cut_gzip_stream"])
def test_a_truncated_tar_keeps_what_precedes_the_break_and_names_it_per_row(tmp_path: Path, case: str):
    import gzip

    png = png_bytes()
    if case == "cut_gzip_stream":
        # Noise photos do not compress, so the cut lands in the last member as in a real download.
        noise = [_noise_png(seed) for seed in range(3)]
        whole = _tar_blocks([(f"{i + 1}.png", data, None) for i, data in enumerate(noise)]) + b"\0" * 1024
        tar_path = tmp_path / "images.tar.gz"
        tar_path.write_bytes(gzip.compress(whole)[:-60])
    else:
        tar_path = tmp_path / "images.tar"
        tar_path.write_bytes(TRUNCATIONS[case](png))
    fetcher = TarFetcher(tar_path, max_bytes=10_000)
    results = fetcher.fetch([FetchRequest(i) for i in (1, 2, 3, 4)])
    fetcher.close()
    assert statuses(results)[:2] == ["ok", "ok"]
    if case == "huge_header":
        assert results[2].status == "too_large" and "'3.png' is 2147483648 bytes" in results[2].error
    else:
        assert results[2].status == "error" and "'3.png' cannot be read" in results[2].error
    assert (
        results[3].status == "error" and f"{tar_path} is truncated or corrupt after member '3.png'" in results[3].error
    )


def _noise_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_repeated_member_name_is_ambiguous_like_two_names_for_one_id(tmp_path: Path):
    tar_path = tmp_path / "images.tar"
    with tarfile.open(tar_path, "w") as archive:
        add_member(archive, "1.png", png_bytes())
        add_member(archive, "1.png", png_bytes())  # same name again: extraction would keep this one
        add_member(archive, "2.png", png_bytes())
        add_member(archive, "a/2.jpg", png_bytes())
    fetcher = TarFetcher(tar_path, max_bytes=10_000)
    first, second = fetcher.fetch([FetchRequest(1), FetchRequest(2)])
    fetcher.close()
    assert (first.status, second.status) == ("error", "error")
    assert first.error == "several images for SAMPLE_ID 1: 1.png, 1.png"
    assert second.error == "several images for SAMPLE_ID 2: 2.png, a/2.jpg"


def test_a_compressed_tar_read_backwards_is_decompressed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Metadata rarely follows archive order; seeking back in a gzip stream re-decodes it from
    the start each time (quadratic), so the archive is decompressed once into a temp file."""
    import gzip

    tar_path = tmp_path / "images.tar.gz"
    with tarfile.open(tar_path, "w:gz") as archive:
        for i in range(1, 6):
            add_member(archive, f"{i}.png", png_bytes())
    seeks = []
    real_seek = gzip.GzipFile.seek
    monkeypatch.setattr(gzip.GzipFile, "seek", lambda self, *a, **k: seeks.append(a) or real_seek(self, *a, **k))
    fetcher = TarFetcher(tar_path, max_bytes=10_000)
    results = fetcher.fetch([FetchRequest(i) for i in range(5, 0, -1)])
    fetcher.close()
    assert statuses(results) == ["ok"] * 5
    assert seeks == []


def test_tar_fetcher_caps_member_size_before_reading(tmp_path: Path):
    tar_path = tmp_path / "images.tar"
    with tarfile.open(tar_path, "w") as archive:
        add_member(archive, "1.png", png_bytes(128))
    [result] = TarFetcher(tar_path, max_bytes=100).fetch([FetchRequest(1)])
    assert result.status == "too_large" and "1.png" in result.error


class FakeCorpus:
    def __init__(self, images: dict[int, bytes]):
        self.images = images

    def image_bytes(self, sample_id: int) -> bytes:
        return self.images[sample_id]


def test_embedded_fetcher_reports_unknown_ids():
    fetcher = EmbeddedFetcher(FakeCorpus({7: png_bytes()}), max_bytes=10_000)
    results = fetcher.fetch([FetchRequest(7), FetchRequest(8)])
    assert statuses(results) == ["ok", "not_found"]
    assert "SAMPLE_ID 8" in results[1].error


@pytest.mark.parametrize(
    "address, public",
    [
        ("93.184.216.34", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.8", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata service
        ("100.100.100.200", False),  # carrier-grade NAT range (another cloud's metadata)
        ("0.0.0.0", False),
        ("224.0.0.1", False),  # multicast
        ("::1", False),
        ("fe80::1", False),
        ("fd00:ec2::254", False),  # IPv6 metadata service
        ("::ffff:127.0.0.1", False),  # loopback hidden in an IPv4-mapped address
        ("::ffff:10.0.0.1", False),
        # IPv6 forms that carry an IPv4 address are judged by it too.
        ("::127.0.0.1", False),  # IPv4-compatible
        ("::ffff:0:127.0.0.1", False),  # SIIT
        ("64:ff9b::169.254.169.254", False),  # NAT64 to the metadata service
        ("64:ff9b:1::a9fe:a9fe", False),  # local-use NAT64
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
        ("64:ff9b::5db8:d822", True),  # NAT64 to a public address stays public
    ],
)
def test_public_address_rule(address: str, public: bool):
    assert is_public_address(address) is public


def _real_photos() -> list[Path]:
    import insightface
    import skimage

    folders = [Path(insightface.__file__).parent / "data" / "images", Path(skimage.__file__).parent / "data"]
    return sorted(p for folder in folders for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def test_header_size_reads_real_jpeg_and_png_headers_as_pil_does():
    from fvlp_core.fetch import header_size

    photos = _real_photos()
    assert len(photos) > 10
    for path in photos:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            expected = image.size
        assert header_size(data) == expected, path.name
        assert check_image(data, len(data)).size == expected
    # Re-encoded as the other format and as progressive JPEG (another start-of-frame marker).
    pixels = Image.open(photos[0]).convert("RGB")
    for kwargs in ({"format": "PNG"}, {"format": "JPEG", "progressive": True}):
        buffer = io.BytesIO()
        pixels.save(buffer, **kwargs)
        assert header_size(buffer.getvalue()) == pixels.size


def test_header_fast_path_keeps_pils_verdicts_on_broken_headers():
    png = png_bytes(16)
    bad_crc = png[:29] + bytes([png[29] ^ 0xFF]) + png[30:]
    assert check_image(bad_crc, 10_000).status == "not_image"  # PIL checks the IHDR CRC too
    assert check_image(png[:20], 10_000).status == "not_image"  # cut inside IHDR
    jpeg = io.BytesIO()
    Image.new("RGB", (40, 30)).save(jpeg, format="JPEG")
    assert check_image(jpeg.getvalue()[:6], 10_000).status == "not_image"  # cut before the frame header
    # A header claiming more pixels than PIL's decompression-bomb bound is refused unread.
    frame = jpeg.getvalue().index(b"\xff\xc0")
    huge = bytearray(jpeg.getvalue())
    huge[frame + 5 : frame + 9] = (60_000).to_bytes(2, "big") + (60_000).to_bytes(2, "big")
    refused = check_image(bytes(huge), 10_000)
    assert refused.status == "too_large" and "decompression bomb" in (refused.error or "")
    zero = bytearray(jpeg.getvalue())
    zero[frame + 5 : frame + 7] = (0).to_bytes(2, "big")
    assert check_image(bytes(zero), 10_000).status == "not_image"


@pytest.mark.parametrize(
    "name",
    [
        "1.jpg",
        "a/b/00042.JPG",
        "x.tar.jpg",
        "dir.jpg/file",
        ".jpg",
        "a/..jpg",
        "a.",
        "1.json",
        "noext",
        "a\\b\\c.webp",
        "./1.jpg",
        "a//b.jpg",
        "/abs/1.jpg",
        "a/./b.jpg",
        "a/b.jpg/",
        ".",
    ],
)
def test_image_keys_are_file_names_without_an_image_extension_normalised_as_posix_paths(name):
    from pathlib import PurePosixPath

    path = PurePosixPath(name.replace("\\", "/"))
    expected = str(path.with_suffix("")) if path.suffix.lower() in {".jpg", ".webp"} else None
    assert image_key(name) == expected
