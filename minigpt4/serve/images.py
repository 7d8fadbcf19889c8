"""Turning `image_url` parts into PIL images: base64 `data:` URLs always, remote http(s) URLs only
when enabled, and then through an SSRF guard.

The guard resolves the host itself, refuses the request if ANY resolved address is private,
loopback, link-local, multicast, reserved or unspecified, then connects to the checked address
(Host header and TLS SNI keep the name) so a second DNS answer cannot swap in an internal
address. Redirects are followed by hand and every hop is checked again. Size and time are
bounded while the body streams in."""
from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urljoin, urlsplit, urlunsplit

from PIL import Image

from minigpt4.data.image import ImageError, load_image
from minigpt4.serve.errors import APIError

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)


@dataclass
class ImageLimits:
    max_bytes: int
    max_pixels: int


def _too_big(param: str, n: int, limit: int) -> APIError:
    return APIError(413, f"{param}: image is {n} bytes, over the limit of {limit} bytes; send a smaller "
                         f"image or start the server with a larger --max-image-bytes", "image_too_large", param)


def decode_data_url(url: str, limits: ImageLimits, param: str) -> bytes:
    m = _DATA_URL.match(url)
    if not m:
        raise APIError(400, f"{param}: not a valid data URL; expected 'data:image/png;base64,<base64 data>'",
                       "invalid_image_url", param)
    if not m.group("b64"):
        raise APIError(400, f"{param}: data URL is not base64-encoded; use 'data:image/...;base64,<data>'",
                       "invalid_image_url", param)
    payload = url[m.end():]
    # Refuse by size before decoding: base64 is 4/3 of the bytes it holds.
    if len(payload) * 3 // 4 > limits.max_bytes + 3:
        raise _too_big(param, len(payload) * 3 // 4, limits.max_bytes)
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise APIError(400, f"{param}: invalid base64 in data URL ({e}); encode the image bytes with "
                            f"standard base64", "invalid_base64", param) from None
    if len(data) > limits.max_bytes:
        raise _too_big(param, len(data), limits.max_bytes)
    return data


def open_image(data: bytes, limits: ImageLimits, param: str) -> Image.Image:
    """Bytes -> RGB PIL image; `ImageError`s (not an image, too many pixels, ...) become 4xx."""
    try:
        return load_image(data, max_pixels=limits.max_pixels)
    except ImageError as e:
        msg = str(e)
        if "Mpx" in msg and "limit" in msg:
            msg = msg.replace("(max_pixels / --max-pixels)", "(--max-image-pixels)")
            raise APIError(413, f"{param}: {msg}", "image_too_large", param) from None
        raise APIError(400, f"{param}: {msg}", "invalid_image", param) from None


# --- SSRF guard ----------------------------------------------------------------------------
def is_public_ip(ip: str) -> bool:
    """True only for globally routable unicast addresses."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    return not (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
                or addr.is_reserved or addr.is_unspecified or not addr.is_global)


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise APIError(400, f"image URL host '{host}' does not resolve ({e})", "image_fetch_failed") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


@dataclass
class RemoteFetcher:
    limits: ImageLimits
    timeout_s: float = 10.0
    max_redirects: int = 3
    ip_allowed: Callable[[str], bool] = is_public_ip  # tests may widen this to a loopback test server

    def check(self, url: str, param: str) -> tuple[str, str, int]:
        """Validate one URL; returns (host, checked ip, port) or raises a 400 naming why."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise APIError(400, f"{param}: image URL scheme '{parts.scheme}' is not allowed; use a data: "
                                f"URL or http(s)", "invalid_image_url", param)
        host = parts.hostname
        if not host:
            raise APIError(400, f"{param}: image URL has no host", "invalid_image_url", param)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        ips = resolve(host, port)
        bad = [ip for ip in ips if not self.ip_allowed(ip)]
        if bad or not ips:
            raise APIError(400, f"{param}: image URL host '{host}' resolves to a non-public address "
                                f"({', '.join(bad)}); private, loopback, link-local, multicast and reserved "
                                f"addresses are blocked", "image_url_blocked", param)
        return host, ips[0], port

    def fetch(self, url: str, param: str) -> bytes:
        import httpx
        deadline = time.monotonic() + self.timeout_s
        for _ in range(self.max_redirects + 1):
            host, ip, port = self.check(url, param)
            parts = urlsplit(url)
            ip_host = f"[{ip}]" if ":" in ip else ip
            pinned = urlunsplit((parts.scheme, f"{ip_host}:{port}", parts.path or "/", parts.query, ""))
            headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": "image/*"}
            ext = {"sni_hostname": host} if parts.scheme == "https" else {}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                with httpx.Client(timeout=remaining, follow_redirects=False, trust_env=False) as client:
                    with client.stream("GET", pinned, headers=headers, extensions=ext) as r:
                        if r.is_redirect and "location" in r.headers:
                            url = urljoin(url, r.headers["location"])
                            continue
                        if r.status_code != 200:
                            raise APIError(400, f"{param}: fetching the image URL gave HTTP {r.status_code}",
                                           "image_fetch_failed", param)
                        return self._read(r, deadline, param)
            except httpx.TimeoutException:
                break
            except httpx.HTTPError as e:
                raise APIError(400, f"{param}: could not fetch the image URL ({type(e).__name__}: {e})",
                               "image_fetch_failed", param) from None
        else:
            raise APIError(400, f"{param}: image URL redirected more than {self.max_redirects} times",
                           "image_fetch_failed", param)
        raise APIError(400, f"{param}: fetching the image URL took longer than {self.timeout_s:g} s",
                       "image_fetch_timeout", param)

    def _read(self, r, deadline: float, param: str) -> bytes:
        declared = int(r.headers.get("content-length") or 0)
        if declared > self.limits.max_bytes:
            raise _too_big(param, declared, self.limits.max_bytes)
        buf = bytearray()
        for chunk in r.iter_bytes():
            buf += chunk
            if len(buf) > self.limits.max_bytes:
                raise _too_big(param, len(buf), self.limits.max_bytes)
            if time.monotonic() > deadline:
                raise APIError(400, f"{param}: fetching the image URL took longer than {self.timeout_s:g} s",
                               "image_fetch_timeout", param)
        return bytes(buf)


def load_image_url(url: str, limits: ImageLimits, fetcher: RemoteFetcher | None, param: str) -> Image.Image:
    if url[:5].lower() == "data:":
        return open_image(decode_data_url(url, limits, param), limits, param)
    if url.lower().startswith(("http://", "https://")):
        if fetcher is None:
            raise APIError(400, f"{param}: remote image URLs are disabled on this server; send the image "
                                f"inline as a base64 data: URL (or start the server with "
                                f"--allow-remote-images)", "remote_images_disabled", param)
        return open_image(fetcher.fetch(url, param), limits, param)
    raise APIError(400, f"{param}: unsupported image URL '{url[:40]}'; use 'data:image/png;base64,...'",
                   "invalid_image_url", param)
