"""Media resolution against a stand-in Label Studio on 127.0.0.1: both token kinds, caching, size limit, SSRF refusals."""
import json
import threading
from http.server import ThreadingHTTPServer

import pytest

from scribblebox.backend.errors import BadRequest
from scribblebox.backend.media import LabelStudioSession, MediaResolver
from stub_http import StubHandler

LEGACY = "0123456789abcdef0123456789abcdef01234567"
PAT = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl"
VIDEO = bytes(range(256)) * 64


class FakeLabelStudio(StubHandler):
    """Serves /data/upload/... to `Token LEGACY` or `Bearer <current access>`; /api/token/refresh/ swaps PAT for access."""

    access = "access-1"
    refreshes = 0
    downloads = 0
    files = {"/data/upload/1/clip.mp4": VIDEO, "/data/upload/1/big.mp4": b"x" * (1024 * 1024 + 10)}

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/api/token/refresh/" and body.get("refresh") == PAT:
            type(self).refreshes += 1
            self.reply(200, json.dumps({"access": type(self).access}).encode())
        else:
            self.reply(401, b'{"detail":"bad refresh"}')

    def do_GET(self):
        auth = self.headers.get("Authorization")
        if auth not in (f"Token {LEGACY}", f"Bearer {type(self).access}"):
            return self.reply(401, b'{"detail":"Authentication credentials were not provided."}')
        path = self.path.split("?")[0]
        if path == "/data/local-files/":
            path = "/data/upload/1/clip.mp4"
        if path.startswith("/api/tasks/"):
            return self.reply(200, json.dumps({"id": 5, "data": {"video": "/data/upload/1/clip.mp4"}, "annotations": []}).encode())
        if path not in self.files:
            return self.reply(404, b'{"detail":"not found"}')
        type(self).downloads += 1
        self.reply(200, self.files[path], "video/mp4")


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # the client hangs up on purpose (size limit): not an error
        pass


@pytest.fixture()
def ls_url():
    server = QuietServer(("127.0.0.1", 0), FakeLabelStudio)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    FakeLabelStudio.access, FakeLabelStudio.refreshes, FakeLabelStudio.downloads = "access-1", 0, 0
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def resolver(tmp_path, url, key=LEGACY, max_bytes=1024 * 1024, roots=()):
    return MediaResolver(tmp_path / "media", max_bytes, list(roots), LabelStudioSession(url, key))


def test_legacy_token_download_is_cached(tmp_path, ls_url):
    media = resolver(tmp_path, ls_url)
    path = media.resolve("/data/upload/1/clip.mp4")
    assert path.read_bytes() == VIDEO and path.suffix == ".mp4" and path.parent == tmp_path / "media"
    assert media.resolve("/data/upload/1/clip.mp4") == path
    assert FakeLabelStudio.downloads == 1
    assert not list((tmp_path / "media").glob("*.part"))


def test_absolute_url_on_the_label_studio_host(tmp_path, ls_url):
    path = resolver(tmp_path, ls_url).resolve(f"{ls_url}/data/upload/1/clip.mp4")
    assert path.read_bytes() == VIDEO


def test_local_files_url_is_fetched(tmp_path, ls_url):
    path = resolver(tmp_path, ls_url).resolve("/data/local-files/?d=clips/a.mp4")
    assert path.read_bytes() == VIDEO and path.suffix == ".mp4"


def test_personal_access_token_is_exchanged_and_renewed(tmp_path, ls_url):
    media = resolver(tmp_path, ls_url, key=PAT)
    assert media.resolve("/data/upload/1/clip.mp4").read_bytes() == VIDEO
    assert FakeLabelStudio.refreshes == 1
    FakeLabelStudio.access = "access-2"  # the old access token expires: a 401, one refresh, one retry
    assert media.session.get_json("/api/tasks/5")["id"] == 5
    assert FakeLabelStudio.refreshes == 2


def test_wrong_keys_are_clear_errors(tmp_path, ls_url):
    with pytest.raises(BadRequest, match="answered 401") as err:
        resolver(tmp_path, ls_url, key="f" * 40).resolve("/data/upload/1/clip.mp4")
    assert err.value.status == 502
    with pytest.raises(BadRequest, match="refresh failed"):
        resolver(tmp_path, ls_url, key="a.b.c").resolve("/data/upload/1/clip.mp4")
    with pytest.raises(BadRequest, match="answered 404"):
        resolver(tmp_path, ls_url).resolve("/data/upload/1/missing.mp4")


def test_size_limit(tmp_path, ls_url):
    with pytest.raises(BadRequest, match="max_download_mb=1") as err:
        resolver(tmp_path, ls_url).resolve("/data/upload/1/big.mp4")
    assert err.value.status == 413
    assert not any((tmp_path / "media").iterdir())


@pytest.mark.parametrize("ref, message", [
    ("http://169.254.169.254/latest/meta-data/", "other than LABEL_STUDIO_URL"),
    ("https://evil.example.com/data/upload/1/clip.mp4", "other than LABEL_STUDIO_URL"),
    ("file:///etc/passwd", "unsupported video URL scheme"),
    ("s3://bucket/clip.mp4", "unsupported video URL scheme"),
    ("/data/upload/../../etc/passwd", "path traversal"),
    ("/data/local-files/?d=../../etc/passwd", "path traversal"),
    ("/data/upload/%2e%2e/secret.mp4", "path traversal"),
])
def test_ssrf_and_traversal_refusals(tmp_path, ls_url, ref, message):
    with pytest.raises(BadRequest, match=message):
        resolver(tmp_path, ls_url).resolve(ref)
    assert FakeLabelStudio.downloads == 0


def test_same_host_other_port_is_refused(tmp_path, ls_url):
    other = ls_url.rsplit(":", 1)[0] + ":1"
    with pytest.raises(BadRequest, match="other than LABEL_STUDIO_URL"):
        resolver(tmp_path, ls_url).resolve(f"{other}/data/upload/1/clip.mp4")


def test_local_paths_only_under_roots(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    (root / "a.mp4").write_bytes(b"v")
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"s")
    (root / "link.mp4").symlink_to(outside)
    media = MediaResolver(tmp_path / "media", 1024, [root])
    assert media.resolve(str(root / "a.mp4")) == (root / "a.mp4").resolve()
    assert media.resolve("a.mp4") == (root / "a.mp4").resolve()
    for ref in (str(outside), "link.mp4", "/data/upload/1/clip.mp4"):
        with pytest.raises(BadRequest, match="neither a file under the allowed media roots"):
            media.resolve(ref)


def test_local_files_read_directly_from_the_document_root(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"v")
    media = MediaResolver(tmp_path / "media", 1024, [], None, local_files_root=tmp_path)
    assert media.resolve("/data/local-files/?d=clips/a.mp4") == (tmp_path / "clips" / "a.mp4").resolve()


def test_from_env(tmp_path):
    media = MediaResolver.from_env(tmp_path, 5, {"LABEL_STUDIO_URL": "http://ls:8080", "LABEL_STUDIO_API_KEY": PAT,
                                                 "SCRIBBLEBOX_MEDIA_ROOTS": str(tmp_path)})
    assert media.session.uses_pat and media.max_bytes == 5 * 1024 * 1024 and media.roots == [tmp_path.resolve()]
    assert not LabelStudioSession("http://ls", LEGACY).uses_pat
    with pytest.raises(ValueError, match="http"):
        LabelStudioSession("ftp://ls", LEGACY)
