"""Remote image URLs: the SSRF guard and the size/time limits of the fetcher.

No traffic ever leaves this machine: blocked URLs are refused before any connection, and the
fetch tests use a real HTTP server on 127.0.0.1 with the guard widened to exactly that address."""
from __future__ import annotations

import http.server
import threading
import time

import httpx
import pytest

from minigpt4.serve.errors import APIError
from minigpt4.serve.images import ImageLimits, RemoteFetcher, is_public_ip, load_image_url
from test_serve_support import LiveServer, png_bytes

BLOCKED_IPS = ["127.0.0.1", "127.8.9.10", "10.0.0.1", "10.255.1.2", "172.16.5.4", "192.168.1.1", "169.254.169.254",
               "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "240.0.0.1", "::1", "::", "fe80::1",
               "fc00::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2001:db8::1"]
PUBLIC_IPS = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"]  # classified only, never contacted


@pytest.mark.parametrize("ip", BLOCKED_IPS)
def test_non_public_addresses_are_blocked(ip):
    assert not is_public_ip(ip)


@pytest.mark.parametrize("ip", PUBLIC_IPS)
def test_public_addresses_pass(ip):
    assert is_public_ip(ip)


LIMITS = ImageLimits(max_bytes=50_000, max_pixels=4_000_000)


@pytest.mark.parametrize("url", ["http://127.0.0.1/a.png", "http://localhost:8080/a.png", "http://[::1]/a.png",
                                 "http://10.1.2.3/a.png", "http://169.254.169.254/latest/meta-data/",
                                 "https://192.168.0.10/x.jpg", "http://[::ffff:127.0.0.1]/a.png",
                                 "http://2130706433/a.png"])  # 2130706433 = 127.0.0.1 as one number
def test_blocked_urls_refused_before_connecting(url, monkeypatch):
    import httpx as _httpx

    def no_network(*a, **k):
        raise AssertionError("the guard must refuse before any connection is made")
    monkeypatch.setattr(_httpx, "Client", no_network)
    with pytest.raises(APIError) as e:
        load_image_url(url, LIMITS, RemoteFetcher(LIMITS), "image_url")
    assert e.value.status == 400 and e.value.code == "image_url_blocked"
    assert "non-public address" in e.value.message


def test_bad_schemes_refused():
    for url in ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://x/"]:
        with pytest.raises(APIError) as e:
            load_image_url(url, LIMITS, RemoteFetcher(LIMITS), "image_url")
        assert e.value.status == 400


# --- real fetches from a loopback test server ---------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path == "/ok.png":
            body = png_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/big.png":  # no Content-Length: the limit must hold while streaming
            self.send_response(200)
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"\0" * 10_000)
        elif self.path == "/slow.png":
            self.send_response(200)
            self.end_headers()
            for _ in range(30):
                self.wfile.write(b"\0" * 10)
                self.wfile.flush()
                time.sleep(0.1)
        elif self.path == "/to-metadata":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
        elif self.path == "/to-ok":
            self.send_response(302)
            self.send_header("Location", "/ok.png")
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()


@pytest.fixture(scope="module")
def image_host():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def _fetcher(timeout=5.0):
    # Widen the guard to exactly the test server's address; everything else stays blocked.
    return RemoteFetcher(LIMITS, timeout_s=timeout, ip_allowed=lambda ip: ip == "127.0.0.1")


def test_fetch_ok_and_same_host_redirect(image_host):
    img = load_image_url(image_host + "/ok.png", LIMITS, _fetcher(), "image_url")
    assert img.size == (64, 48) and img.mode == "RGB"
    assert load_image_url(image_host + "/to-ok", LIMITS, _fetcher(), "image_url").size == (64, 48)


def test_redirect_to_internal_address_is_blocked(image_host):
    with pytest.raises(APIError) as e:
        load_image_url(image_host + "/to-metadata", LIMITS, _fetcher(), "image_url")
    assert e.value.code == "image_url_blocked" and "169.254.169.254" in e.value.message


def test_size_and_time_limits(image_host):
    with pytest.raises(APIError) as e:
        load_image_url(image_host + "/big.png", LIMITS, _fetcher(), "image_url")
    assert e.value.status == 413 and e.value.code == "image_too_large"
    t0 = time.monotonic()
    with pytest.raises(APIError) as e:
        load_image_url(image_host + "/slow.png", LIMITS, _fetcher(timeout=0.5), "image_url")
    assert e.value.code == "image_fetch_timeout" and time.monotonic() - t0 < 2.5
    with pytest.raises(APIError) as e:
        load_image_url(image_host + "/missing.png", LIMITS, _fetcher(), "image_url")
    assert "HTTP 404" in e.value.message


def test_api_with_remote_images_enabled_blocks_loopback(tiny_model, image_host):
    from minigpt4.chat.engine import ChatEngine
    from minigpt4.serve.app import create_app
    from minigpt4.serve.config import ServeConfig
    app = create_app(ChatEngine(tiny_model), ServeConfig(model_name="m", allow_remote_images=True))
    with LiveServer(app) as srv:
        for url in [image_host + "/ok.png", "http://[::1]/a.png", "http://10.0.0.7/a.png"]:
            r = httpx.post(srv.url + "/v1/chat/completions", timeout=30, json={
                "model": "m", "max_tokens": 2,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]})
            assert r.status_code == 400 and r.json()["error"]["code"] == "image_url_blocked", r.text
