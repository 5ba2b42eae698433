"""Model downloads against a real HTTP server on 127.0.0.1: resume, fallback, hashing,
and the ``farm models`` commands."""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import random
import socket
import threading

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine import catalogue  # noqa: E402
from engine.catalogue import DiffusionModelEntry, ModelFile  # noqa: E402
from engine.download import (  # noqa: E402
    DownloadError,
    download,
    file_state,
    part_path,
    sidecar_path,
    verify,
)
from farm import models_cmd  # noqa: E402

DATA = random.Random(1234).randbytes(1_000_000)
DATA_SHA = hashlib.sha256(DATA).hexdigest()
CUT_AT = 300_000  # where the "flaky" route drops the connection on its first request
HUGE = 20 << 20  # what the "huge" and "endless" routes send for a 1 MB model


class _Server:
    """Threaded HTTP server with routes that misbehave in chosen ways; logs requests."""

    def __init__(self):
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.bytes_sent = 0
        self.flaky_failures_left = 1
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                range_header = self.headers.get("Range")
                server.requests.append((self.path, range_header))
                route = self.path.split("/")[1]
                if route == "missing":
                    self.send_error(404, "Not Found")
                    return
                if route.startswith("redirect-"):  # redirect-ftp, redirect-file, redirect-good
                    target = route.removeprefix("redirect-")
                    location = {"ftp": "ftp://127.0.0.1/model.bin", "file": "file:///etc/passwd"}.get(
                        target, f"{server.base}/{target}/model.bin")
                    self.send_response(302)
                    self.send_header("Location", location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if route in ("huge", "endless"):  # 20 MiB of junk; "endless" does not say its length
                    self.send_response(200)
                    if route == "huge":
                        self.send_header("Content-Length", str(HUGE))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    block = bytes(1 << 16)
                    try:
                        for _ in range(HUGE // len(block)):
                            self.wfile.write(block)
                            server.bytes_sent += len(block)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the client stopped reading: what the size cap is for
                    return
                body = DATA if route != "bad" else bytes(reversed(DATA))
                honour_range = route in ("good", "flaky", "bad")
                start = 0
                if range_header and honour_range:
                    start = int(range_header.removeprefix("bytes=").rstrip("-"))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if route == "flaky" and server.flaky_failures_left > 0:
                    server.flaky_failures_left -= 1
                    payload = payload[:CUT_AT]
                    self.close_connection = True
                server.bytes_sent += len(payload)  # counted first: the client may finish before write returns
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, route: str) -> str:
        return f"{self.base}/{route}/model.bin"


@pytest.fixture()
def server():
    srv = _Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/model.bin"


def _model(*urls: str, sha: str = DATA_SHA) -> ModelFile:
    return ModelFile(name="tiny-test-unet", filename="tiny-test-unet.pt", sha256=sha, urls=urls, size_hint=len(DATA))


def test_download_verifies_writes_sidecar_and_reuses_cache(server, tmp_path):
    model = _model(server.url("good"))
    path = download(model, tmp_path, progress=False)
    assert path == tmp_path / model.filename
    assert path.read_bytes() == DATA
    assert not part_path(model, tmp_path).exists()
    assert f"sha256={DATA_SHA}" in sidecar_path(model, tmp_path).read_text()
    assert file_state(model, tmp_path) == "downloaded"
    assert len(server.requests) == 1

    assert download(model, tmp_path, progress=False) == path
    assert len(server.requests) == 1  # cached file reused, no new request


def test_interrupted_transfer_is_resumed_with_range(server, tmp_path):
    model = _model(server.url("flaky"))
    path = download(model, tmp_path, progress=False)
    assert path.read_bytes() == DATA
    assert [r for _, r in server.requests] == [None, f"bytes={CUT_AT}-"]
    assert server.bytes_sent == len(DATA)  # nothing fetched twice


def test_leftover_part_file_is_resumed(server, tmp_path):
    model = _model(server.url("good"))
    part_path(model, tmp_path).write_bytes(DATA[:123_456])
    download(model, tmp_path, progress=False)
    assert (tmp_path / model.filename).read_bytes() == DATA
    assert server.requests == [("/good/model.bin", "bytes=123456-")]
    assert server.bytes_sent == len(DATA) - 123_456


def test_complete_part_file_gets_416_and_is_accepted(server, tmp_path):
    model = _model(server.url("good"))
    part_path(model, tmp_path).write_bytes(DATA)
    download(model, tmp_path, progress=False)
    assert (tmp_path / model.filename).read_bytes() == DATA
    assert server.bytes_sent == 0


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    model = _model(server.url("norange"))
    part_path(model, tmp_path).write_bytes(b"\0" * 50_000)  # wrong bytes: must be overwritten
    download(model, tmp_path, progress=False)
    assert (tmp_path / model.filename).read_bytes() == DATA
    assert server.requests == [("/norange/model.bin", "bytes=50000-")]


def test_stale_part_with_wrong_prefix_is_redone_cleanly(server, tmp_path):
    model = _model(server.url("good"))
    part_path(model, tmp_path).write_bytes(b"\xff" * 40_000)
    download(model, tmp_path, progress=False)
    assert (tmp_path / model.filename).read_bytes() == DATA
    assert [r for _, r in server.requests] == ["bytes=40000-", None]


def test_bad_hash_is_refused_and_leaves_no_file(server, tmp_path):
    model = _model(server.url("bad"))
    with pytest.raises(DownloadError) as info:
        download(model, tmp_path, progress=False)
    message = str(info.value)
    assert "tiny-test-unet" in message and server.url("bad") in message and "sha256 mismatch" in message
    assert "\n" not in message
    assert not (tmp_path / model.filename).exists()
    assert not part_path(model, tmp_path).exists()
    assert file_state(model, tmp_path) == "missing"


def test_a_sha256_prefix_verifies_like_torchvision_and_a_wrong_one_is_refused(server, tmp_path):
    model = _model(server.url("good"), sha=DATA_SHA[:8])
    path = download(model, tmp_path, progress=False)
    assert path.read_bytes() == DATA
    assert f"sha256={DATA_SHA}" in sidecar_path(model, tmp_path).read_text()  # the full digest is recorded
    assert file_state(model, tmp_path) == "downloaded" and verify(model, tmp_path) is True
    wrong = _model(server.url("good"), sha="00000000")
    assert verify(wrong, tmp_path) is False
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download(wrong, tmp_path / "other", progress=False)
    assert not ModelFile("x", "x", "", ()).matches(DATA_SHA)  # an empty hash never matches


def test_catalogue_has_torchvision_vgg16_for_lpips():
    from engine.models import VGG16_FILENAME

    assert catalogue.lookup_model_file("vgg16") is catalogue.VGG16
    assert catalogue.VGG16.filename == VGG16_FILENAME == "vgg16-397923af.pth"
    assert catalogue.VGG16.matches("397923af" + "0" * 56) and not catalogue.VGG16.matches("0" * 64)


@pytest.mark.parametrize("first_route", ["refused", "missing", "bad"])
def test_falls_back_to_next_url(server, tmp_path, first_route):
    first = _refused_url() if first_route == "refused" else server.url(first_route)
    model = _model(first, server.url("good"))
    path = download(model, tmp_path, progress=False)
    assert path.read_bytes() == DATA
    assert server.requests[-1] == ("/good/model.bin", None)


def test_error_names_every_url_and_its_failure(server, tmp_path):
    refused, missing = _refused_url(), server.url("missing")
    with pytest.raises(DownloadError) as info:
        download(_model(refused, missing, "ftp-nonsense://x"), tmp_path, progress=False, timeout=5)
    message = str(info.value)
    assert f"{refused}: " in message and "refused" in message.lower()
    assert f"{missing}: HTTP 404" in message
    assert "ftp-nonsense://x: " in message
    assert "\n" not in message


def test_verify_and_file_state(server, tmp_path):
    model = _model(server.url("good"))
    assert verify(model, tmp_path) is None
    download(model, tmp_path, progress=False)
    assert verify(model, tmp_path) is True
    path = tmp_path / model.filename
    data = bytearray(path.read_bytes())
    data[500] ^= 0xFF
    path.write_bytes(bytes(data))
    assert file_state(model, tmp_path) == "downloaded"  # same size: list does not hash
    assert verify(model, tmp_path) is False
    assert file_state(model, tmp_path) == "corrupt"
    download(model, tmp_path, progress=False)  # a corrupt file is fetched again
    assert path.read_bytes() == DATA and file_state(model, tmp_path) == "downloaded"


def test_file_state_sees_size_change_and_unverified_copies(tmp_path, server):
    model = _model(server.url("good"))
    download(model, tmp_path, progress=False)
    with open(tmp_path / model.filename, "ab") as handle:
        handle.write(b"x")
    assert file_state(model, tmp_path) == "corrupt"
    sidecar_path(model, tmp_path).unlink()
    assert file_state(model, tmp_path) == "unverified"
    part_path(model, tmp_path).write_bytes(b"abc")
    (tmp_path / model.filename).unlink()
    assert file_state(model, tmp_path) == "partial"


# --------------------------------------------------------------------------------------
# farm models ... (the catalogue pointed at the local server)


@pytest.fixture()
def local_catalogue(server, monkeypatch):
    unet = ModelFile("local-unet", "local-unet.pt", DATA_SHA, (server.url("missing"), server.url("good")), len(DATA))
    secondary = ModelFile("local-secondary", "local-secondary.pth", DATA_SHA, (server.url("flaky"),), None)
    entry = DiffusionModelEntry(file=unet, unet_settings=(("image_size", 64),))
    monkeypatch.setattr(catalogue, "DIFFUSION_MODELS", {"local-unet": entry})
    monkeypatch.setattr(catalogue, "SECONDARY_MODEL", secondary)
    # torchvision-style: only a prefix of the sha256 is published (in the file name)
    vgg = ModelFile("local-vgg", f"local-vgg-{DATA_SHA[:8]}.pth", DATA_SHA[:8], (server.url("good"),), len(DATA))
    monkeypatch.setattr(catalogue, "VGG16", vgg)
    raft = ModelFile("local-raft", f"local-raft-{DATA_SHA[:8]}.pth", DATA_SHA[:8], (server.url("good"),), len(DATA))
    monkeypatch.setattr(catalogue, "RAFT", raft)
    return unet, secondary


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="farm")
    models_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_models_download_all_then_list_and_verify(local_catalogue, tmp_path, capsys):
    unet, secondary = local_catalogue
    assert _run(["models", "list", "--dir", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert "local-unet" in listed and "diffusion 64px" in listed and "missing" in listed

    assert _run(["models", "download", "all", "--dir", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / unet.filename) in out and str(tmp_path / secondary.filename) in out
    assert (tmp_path / secondary.filename).read_bytes() == DATA

    assert _run(["models", "list", "--dir", str(tmp_path)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("local-")]
    assert {row[0]: row[-1] for row in rows} == {
        "local-unet": "downloaded", "local-secondary": "downloaded", "local-vgg": "downloaded",
        "local-raft": "downloaded"}
    assert any(row[0] == "local-vgg" and "lpips" in row for row in rows)
    assert any(row[0] == "local-raft" and "flow" in row for row in rows)

    assert _run(["models", "verify", "--dir", str(tmp_path)]) == 0
    (tmp_path / unet.filename).write_bytes(DATA[::-1])
    assert _run(["models", "verify", "local-unet", "--dir", str(tmp_path)]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_models_download_unknown_name_is_usage_error(local_catalogue, tmp_path, capsys, server):
    assert _run(["models", "download", "local-unt", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("farm: error: unknown model 'local-unt'") and "'local-unet'" in err
    assert "\n" not in err
    assert server.requests == []  # nothing fetched before the names are all valid


def test_models_download_failure_exits_1_naming_urls(local_catalogue, tmp_path, capsys, monkeypatch, server):
    broken = ModelFile("local-unet", "local-unet.pt", "0" * 64, (server.url("good"),), None)
    monkeypatch.setattr(catalogue, "DIFFUSION_MODELS", {"local-unet": DiffusionModelEntry(broken, ())})
    assert _run(["models", "download", "local-unet", "--dir", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("farm: error: could not download model 'local-unet'") and server.url("good") in err


def test_models_download_clip_names_route_to_open_clip(local_catalogue, tmp_path, capsys):
    assert models_cmd._resolve_download_targets(["ViT-B/32", "local-unet", "RN50::cc12m"]) == [
        ("ViT-B-32", "openai"),
        local_catalogue[0],
        ("RN50", "cc12m"),
    ]
    assert _run(["models", "download", "tiny-vit::random", "--dir", str(tmp_path)]) == 0
    assert "nothing to download" in capsys.readouterr().out


def test_progress_bar_goes_to_stderr(server, tmp_path, capsys):
    download(_model(server.url("good")), tmp_path, progress=True)
    captured = capsys.readouterr()
    assert "tiny-test-unet" in captured.err and "100%" in captured.err
    assert captured.out == ""


def test_concurrent_downloads_of_one_file_fetch_it_once(server, tmp_path):
    model = _model(server.url("good"))
    results: list[object] = []

    def worker():
        results.append(download(model, tmp_path, progress=False))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [tmp_path / model.filename] * 3
    assert (tmp_path / model.filename).read_bytes() == DATA
    assert len(server.requests) == 1 and server.bytes_sent == len(DATA)


def test_clip_prefetch_failure_is_one_line_exit_1(monkeypatch, tmp_path, capsys):
    import open_clip.pretrained as clip_pretrained

    asked = []

    def failing_download(cfg, *args, **kwargs):
        asked.append(cfg)
        raise OSError("hub unreachable\nsecond line of detail")

    monkeypatch.setattr(clip_pretrained, "download_pretrained", failing_download)
    assert _run(["models", "download", "ViT-B/32", "--dir", str(tmp_path)]) == 1
    assert asked and asked[0] == clip_pretrained.get_pretrained_cfg("ViT-B-32", "openai")
    err = capsys.readouterr().err
    assert err == "farm: error: could not fetch CLIP ViT-B-32::openai through open_clip: hub unreachable\n"


def test_models_list_shows_3ds_depth_model_folder(local_catalogue, tmp_path, capsys):
    """DPT-Large is a folder of transformers files (`farm models download dpt-large`)."""
    assert _run(["models", "list", "--dir", str(tmp_path)]) == 0
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("dpt-large"))
    assert row[-1] == "missing" and "depth" in row
    (tmp_path / "dpt-large").mkdir()
    (tmp_path / "dpt-large" / "config.json").write_text("{}")
    assert _run(["models", "list", "--dir", str(tmp_path)]) == 0
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("dpt-large"))
    assert row[-1] == "downloaded"


# -- size cap and redirects ------------------------------------------------------------------

def test_size_cap_follows_the_catalogued_size():
    from engine.download import SIZE_SLACK_BYTES, UNKNOWN_SIZE_LIMIT_BYTES, max_download_bytes

    assert max_download_bytes(_model("http://x")) == int(len(DATA) * 1.1) + SIZE_SLACK_BYTES
    assert max_download_bytes(ModelFile("n", "n.pt", DATA_SHA, ("http://x",))) == UNKNOWN_SIZE_LIMIT_BYTES
    for entry in (catalogue.SECONDARY_MODEL, catalogue.VGG16, catalogue.RAFT,
                  *(e.file for e in catalogue.DIFFUSION_MODELS.values())):
        if entry.size_hint is not None:  # a real file a bit larger than its rounded hint still fits
            assert max_download_bytes(entry) > entry.size_hint * 1.05


@pytest.mark.parametrize("route", ["huge", "endless"])
def test_a_server_sending_far_more_than_the_model_is_stopped(server, tmp_path, route):
    """The model is 1 MB: a 20 MiB body (announced, or sent without a length) is stopped at
    the cap, its bytes are not kept, and the next URL still delivers the file."""
    from engine.download import max_download_bytes

    model = _model(server.url(route))
    with pytest.raises(DownloadError) as error:
        download(model, tmp_path, progress=False)
    message = str(error.value)
    assert "\n" not in message and server.url(route) in message
    assert f"more than {max_download_bytes(model)} bytes (the catalogue expects about {len(DATA)} bytes)" in message
    assert ("announced" in message) == (route == "huge")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == []
    assert server.bytes_sent < HUGE  # it stopped reading (the server could not send it all)

    both = _model(server.url(route), server.url("good"))
    assert download(both, tmp_path, progress=False).read_bytes() == DATA


def test_redirects_are_followed_to_http_only(server, tmp_path):
    model = _model(server.url("redirect-good"))
    assert download(model, tmp_path / "ok", progress=False).read_bytes() == DATA
    for target in ("ftp", "file"):
        url = server.url(f"redirect-{target}")
        with pytest.raises(DownloadError) as error:
            download(_model(url), tmp_path / target, progress=False)
        message = str(error.value)
        assert "\n" not in message and not (tmp_path / target / "tiny-test-unet.pt").exists()
        if target == "ftp":  # urllib itself would follow it
            assert f"{url}: refused a redirect to ftp://127.0.0.1/model.bin" in message
        else:  # urllib refuses file: itself
            assert f"{url}: HTTP 302 Found - Redirection to url 'file:///etc/passwd' is not allowed" in message


def test_an_https_url_is_not_redirected_to_plain_http():
    import urllib.error
    import urllib.request

    from engine.download import _HttpOnlyRedirects

    handler = _HttpOnlyRedirects()
    request = urllib.request.Request("https://example.org/model.pt")
    with pytest.raises(urllib.error.URLError, match="refused a redirect to http://mirror.example.org/m.pt"):
        handler.redirect_request(request, None, 302, "Found", {}, "http://mirror.example.org/m.pt")
    followed = handler.redirect_request(request, None, 302, "Found", {}, "https://mirror.example.org/m.pt")
    assert followed.full_url == "https://mirror.example.org/m.pt"


def test_a_non_http_catalogue_url_is_not_opened(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(DATA)
    with pytest.raises(DownloadError, match="not an http\\(s\\) URL: file://"):
        download(_model(secret.as_uri()), tmp_path / "models", progress=False)


# -- the model folder named by DISCO_FARM_MODELS ----------------------------------------------

def test_models_list_says_when_disco_farm_models_is_not_a_folder(local_catalogue, monkeypatch, capsys):
    """/dev/null listed every model as 'missing', with no error."""
    monkeypatch.setenv("DISCO_FARM_MODELS", os.devnull)
    for command in ("list", "verify"):
        assert _run(["models", command]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err == f"farm: error: DISCO_FARM_MODELS={os.devnull}: is not a folder\n"


def test_models_commands_name_a_disco_farm_models_that_does_not_expand(local_catalogue, monkeypatch, capsys):
    """'~nonexistentuser/x' ended in pathlib's RuntimeError traceback."""
    from farm.cli import main

    monkeypatch.setenv("DISCO_FARM_MODELS", "~nonexistentuser/x")
    expected = ("farm: error: DISCO_FARM_MODELS=~nonexistentuser/x: cannot expand '~nonexistentuser': "
                "user 'nonexistentuser' has no home folder here\n")
    for argv in (["models", "list"], ["models", "download", "local-unet", "--quiet"], ["models", "verify"]):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert out == "" and err == expected, argv


def test_models_list_of_a_disco_farm_models_folder_not_made_yet_lists_all_missing(local_catalogue, tmp_path,
                                                                                 monkeypatch, capsys):
    monkeypatch.setenv("DISCO_FARM_MODELS", str(tmp_path / "not-yet"))
    assert _run(["models", "list"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("local-")]
    assert rows and all(row[-1] == "missing" for row in rows)
