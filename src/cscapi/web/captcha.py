"""The captcha kinds of the captcha wall, behind one interface (:class:`CaptchaKind`).

- :class:`ProofOfWork` (the default): the browser finds a number ``n`` such that ``sha256(salt + str(n))`` starts with
  ``difficulty`` zero bits, with inline JavaScript (WebCrypto, or a bundled SHA-256 where WebCrypto is missing on plain
  http); no user input, no third party.
- :class:`ImageCaptcha`: a distorted text as an inline PNG (``data:`` URI), for clients without JavaScript; needs the
  ``captcha`` package (``pip install cscapi[web-image]``).
- :class:`Turnstile`, :class:`HCaptcha`, :class:`ReCaptcha`: the provider's widget (its script is then the page's only
  external resource), verified server-side with httpx (bounded time and size).

Every kind hands the page a challenge token signed with the bouncer's key (HMAC-SHA256) holding the kind, a random
id, an expiry and the client IP: verification needs no server-side state, so any worker verifies what another issued.
The built-in kinds are single-use: each process remembers the ids it accepted until they expire (a bounded set), so a
replay is refused by that process; across workers, one solved challenge can yield at most one cookie per worker within
its lifetime, each bound to the same IP.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import secrets
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from cscapi.errors import ConfigurationError
from cscapi.web._signing import Signer

__all__ = [
    "CaptchaContext",
    "CaptchaKind",
    "HCaptcha",
    "ImageCaptcha",
    "ProofOfWork",
    "ReCaptcha",
    "Turnstile",
]

logger = logging.getLogger("cscapi.web")

_PURPOSE = "cscapi-challenge"


@dataclass(frozen=True)
class CaptchaContext:
    """What a captcha kind needs to issue or verify one challenge: the signer, the client IP, the time, the page's
    CSP nonce, the challenge lifetime (seconds) and the wall's texts (already chosen for the visitor's language)."""

    signer: Signer
    ip: str
    now: float
    lifetime: float
    nonce: str
    texts: Mapping[str, str]


class _UsedIds:
    """Challenge ids already accepted by this process, kept until they expire; bounded (oldest dropped first)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._ids: dict[str, float] = {}
        self._limit = limit
        self._lock = threading.Lock()

    def claim(self, challenge_id: str, expires: float, now: float) -> bool:
        """True the first time ``challenge_id`` is claimed (then remembered until ``expires``), False afterwards."""
        with self._lock:
            ids = self._ids
            if challenge_id in ids:
                return False
            while ids:
                oldest = next(iter(ids))
                if ids[oldest] > now and len(ids) < self._limit:
                    break
                del ids[oldest]
            ids[challenge_id] = expires
            return True

    def __len__(self) -> int:
        return len(self._ids)


class CaptchaKind:
    """One way to tell a human (or a willing browser) from a bot. Subclasses set ``kind`` and implement
    :meth:`widget` and :meth:`check`; :meth:`acheck` is the async form (the default calls :meth:`check`).

    :meth:`issue` and :meth:`verify` wrap them with the signed challenge token (field ``cscapi_challenge``).
    """

    kind: ClassVar[str] = ""
    external_origins: ClassVar[tuple[str, ...]] = ()
    """Origins the page must load scripts/frames from (only the third-party kinds have any)."""

    def issue(self, ctx: CaptchaContext) -> tuple[dict[str, str], str]:
        """The challenge form's extra attributes and its inner HTML: the signed token and the kind's widget."""
        challenge_id = secrets.token_urlsafe(12)
        extra = self.extra_fields(ctx, challenge_id)
        token = ctx.signer.sign(_PURPOSE, self.kind, challenge_id, str(int(ctx.now + ctx.lifetime)), ctx.ip, *extra)
        hidden = f'<input type="hidden" name="cscapi_challenge" value="{html.escape(token)}">'
        return self.form_attributes(ctx, challenge_id), hidden + self.widget(ctx, challenge_id)

    async def aissue(self, ctx: CaptchaContext) -> tuple[dict[str, str], str]:
        """:meth:`issue` for async adapters: a kind with costly work (the image captcha's PNG) does it off the event
        loop; the default calls :meth:`issue`, which must then not block."""
        return self.issue(ctx)

    def form_attributes(self, ctx: CaptchaContext, challenge_id: str) -> dict[str, str]:
        """Attributes of the challenge ``<form>`` (unescaped: the wall escapes them); none by default."""
        return {}

    def _open(self, ctx: CaptchaContext, form: Mapping[str, str]) -> list[str] | None:
        fields = ctx.signer.unsign(_PURPOSE, form.get("cscapi_challenge", ""))
        if fields is None or len(fields) < 4 or fields[0] != self.kind:
            return None
        try:
            expires = int(fields[2])
        except ValueError:
            return None
        if expires <= ctx.now or fields[3] != ctx.ip:
            return None
        return fields

    def verify(self, ctx: CaptchaContext, form: Mapping[str, str]) -> bool:
        """True if ``form`` (the POSTed fields) holds a valid, unexpired challenge for ``ctx.ip`` and its answer."""
        fields = self._open(ctx, form)
        return fields is not None and self.check(ctx, form, fields[1], int(fields[2]), fields[4:])

    async def averify(self, ctx: CaptchaContext, form: Mapping[str, str]) -> bool:
        """:meth:`verify` for async adapters (the third-party kinds then verify with ``httpx.AsyncClient``)."""
        fields = self._open(ctx, form)
        return fields is not None and await self.acheck(ctx, form, fields[1], int(fields[2]), fields[4:])

    def extra_fields(self, ctx: CaptchaContext, challenge_id: str) -> tuple[str, ...]:
        """More fields to sign into the challenge token (none by default)."""
        return ()

    def widget(self, ctx: CaptchaContext, challenge_id: str) -> str:
        """The kind's part of the form (HTML; every inserted value escaped)."""
        raise NotImplementedError

    def check(
        self, ctx: CaptchaContext, form: Mapping[str, str], challenge_id: str, expires: int, extra: list[str]
    ) -> bool:
        """Whether the answer in ``form`` solves the (already authenticated) challenge."""
        raise NotImplementedError

    async def acheck(
        self, ctx: CaptchaContext, form: Mapping[str, str], challenge_id: str, expires: int, extra: list[str]
    ) -> bool:
        """Async :meth:`check` (the default runs :meth:`check`, which must then not block)."""
        return self.check(ctx, form, challenge_id, expires, extra)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# A compact SHA-256 for browsers without WebCrypto (crypto.subtle exists only on https and localhost).
_POW_JS = """
(function(){
var f=document.getElementById('cscapi-form'),st=document.getElementById('cscapi-status');
if(!f)return;var salt=f.getAttribute('data-salt'),bits=+f.getAttribute('data-bits');
var K=[],H0=[];(function(){var n=2,c=0;function fr(x){return((x-Math.floor(x))*4294967296)|0;}
for(;c<64;n++){var p=true;for(var d=2;d*d<=n;d++)if(n%d===0){p=false;break;}
if(p){if(c<8)H0[c]=fr(Math.pow(n,1/2));K[c++]=fr(Math.pow(n,1/3));}}})();
function sha(b){var l=b.length,w=new Array(64),H=H0.slice(),m=new Uint8Array(((l+9+63)>>6)<<6);m.set(b);m[l]=128;
var bl=l*8,L=m.length;m[L-1]=bl&255;m[L-2]=(bl>>>8)&255;m[L-3]=(bl>>>16)&255;m[L-4]=(bl>>>24)&255;
for(var o=0;o<L;o+=64){for(var i=0;i<16;i++)w[i]=(m[o+4*i]<<24)|(m[o+4*i+1]<<16)|(m[o+4*i+2]<<8)|m[o+4*i+3];
for(i=16;i<64;i++){var a=w[i-15],b2=w[i-2];
var s0=((a>>>7)|(a<<25))^((a>>>18)|(a<<14))^(a>>>3),s1=((b2>>>17)|(b2<<15))^((b2>>>19)|(b2<<13))^(b2>>>10);
w[i]=(w[i-16]+s0+w[i-7]+s1)|0;}
var A=H[0],B=H[1],C=H[2],D=H[3],E=H[4],F=H[5],G=H[6],X=H[7];
for(i=0;i<64;i++){var S1=((E>>>6)|(E<<26))^((E>>>11)|(E<<21))^((E>>>25)|(E<<7)),ch=(E&F)^(~E&G),
t1=(X+S1+ch+K[i]+w[i])|0,S0=((A>>>2)|(A<<30))^((A>>>13)|(A<<19))^((A>>>22)|(A<<10)),mj=(A&B)^(A&C)^(B&C),
t2=(S0+mj)|0;X=G;G=F;F=E;E=(D+t1)|0;D=C;C=B;B=A;A=(t1+t2)|0;}
H[0]=(H[0]+A)|0;H[1]=(H[1]+B)|0;H[2]=(H[2]+C)|0;H[3]=(H[3]+D)|0;H[4]=(H[4]+E)|0;H[5]=(H[5]+F)|0;
H[6]=(H[6]+G)|0;H[7]=(H[7]+X)|0;}
var out=new Uint8Array(32);for(i=0;i<8;i++){out[4*i]=H[i]>>>24;out[4*i+1]=(H[i]>>>16)&255;
out[4*i+2]=(H[i]>>>8)&255;out[4*i+3]=H[i]&255;}return out;}
function zeros(d){var c=0;for(var i=0;i<d.length;i++){if(d[i]===0){c+=8;continue;}
return c+Math.clz32(d[i])-24;}return c;}
var enc=new TextEncoder(),sub=window.crypto&&window.crypto.subtle;
function done(n){f.elements.answer.value=String(n);f.submit();}
async function run(){var n=0;
if(sub){for(;;n++){var d=new Uint8Array(await sub.digest('SHA-256',enc.encode(salt+n)));
if(zeros(d)>=bits)return done(n);}}
for(;;){for(var j=0;j<5000;j++,n++){if(zeros(sha(enc.encode(salt+n)))>=bits)return done(n);}
await new Promise(function(r){setTimeout(r,0);});}}
run().catch(function(){if(st)st.textContent=f.getAttribute('data-failed');});
})();
"""


def leading_zero_bits(digest: bytes) -> int:
    """How many leading bits of ``digest`` are zero."""
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


class ProofOfWork(CaptchaKind):
    """The browser proves some work: it finds ``n`` with ``sha256(salt + str(n))`` starting with ``difficulty`` zero
    bits (2**difficulty hashes on average; 16 is well under a second in a browser). No user input, no third party.

    Clients without JavaScript cannot pass it: pair it with :class:`ImageCaptcha` if they matter (``captcha=`` takes
    one kind; a site serving both picks per client in its own code).
    """

    kind: ClassVar[str] = "pow"

    def __init__(self, difficulty: int = 16) -> None:
        if not isinstance(difficulty, int) or isinstance(difficulty, bool) or not 1 <= difficulty <= 32:
            raise ConfigurationError(f"ProofOfWork difficulty must be an int from 1 to 32, not {difficulty!r}")
        self.difficulty = difficulty
        self._used = _UsedIds()

    def widget(self, ctx: CaptchaContext, challenge_id: str) -> str:
        texts = ctx.texts
        return (
            '<input type="hidden" name="answer" value="">'
            f'<p id="cscapi-status" role="status" aria-live="polite">{html.escape(texts["pow_working"])}</p>'
            f"<noscript><p>{html.escape(texts['pow_noscript'])}</p></noscript>"
            f'<script nonce="{ctx.nonce}">{_POW_JS}</script>'
        )

    def form_attributes(self, ctx: CaptchaContext, challenge_id: str) -> dict[str, str]:
        """The ``data-*`` attributes the script reads (the salt is the challenge id)."""
        return {
            "data-salt": challenge_id,
            "data-bits": str(self.difficulty),
            "data-failed": ctx.texts["pow_failed"],
        }

    def extra_fields(self, ctx: CaptchaContext, challenge_id: str) -> tuple[str, ...]:
        return (str(self.difficulty),)

    def check(
        self, ctx: CaptchaContext, form: Mapping[str, str], challenge_id: str, expires: int, extra: list[str]
    ) -> bool:
        answer = form.get("answer", "")
        if not extra or not answer.isdigit() or len(answer) > 12 or not answer.isascii():
            return False
        try:
            bits = int(extra[0])
        except ValueError:
            return False
        digest = hashlib.sha256((challenge_id + answer).encode()).digest()
        if leading_zero_bits(digest) < bits:
            return False
        return self._used.claim(challenge_id, expires, ctx.now)

    def __repr__(self) -> str:
        return f"ProofOfWork(difficulty={self.difficulty})"


def solve_proof_of_work(salt: str, difficulty: int, limit: int = 1 << 26) -> int:
    """The smallest ``n`` solving a :class:`ProofOfWork` challenge (what the browser script computes); for tests and
    non-browser clients of one's own."""
    for n in range(limit):
        if leading_zero_bits(hashlib.sha256(f"{salt}{n}".encode()).digest()) >= difficulty:
            return n
    raise ValueError("no solution below the limit")


_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I


def _default_renderer(text: str) -> bytes:
    try:
        from captcha.image import ImageCaptcha as _Renderer  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise ConfigurationError(
            "the image captcha needs the 'captcha' package: pip install 'cscapi[web-image]'"
        ) from None
    data: bytes = _Renderer(width=240, height=90).generate(text).getvalue()
    return data


class ImageCaptcha(CaptchaKind):
    """A distorted text to type, for clients without JavaScript, rendered as an inline PNG (no external resource).

    The answer is never stored: the challenge token carries only a keyed digest of it. ``renderer`` turns the text into
    PNG bytes (default: the ``captcha`` package, ``pip install 'cscapi[web-image]'``). Under ASGI the PNG is rendered
    in a worker thread (:meth:`aissue`), at most ``max_concurrent_renders`` at once per event loop (the others wait
    their turn): a burst of challenge pages neither blocks the loop nor takes every core.
    """

    kind: ClassVar[str] = "image"

    def __init__(
        self, length: int = 5, renderer: Callable[[str], bytes] | None = None, *, max_concurrent_renders: int = 2
    ) -> None:
        if not isinstance(length, int) or not 3 <= length <= 10:
            raise ConfigurationError(f"ImageCaptcha length must be an int from 3 to 10, not {length!r}")
        if not isinstance(max_concurrent_renders, int) or not 1 <= max_concurrent_renders <= 64:
            raise ConfigurationError(
                f"ImageCaptcha max_concurrent_renders must be an int from 1 to 64, not {max_concurrent_renders!r}"
            )
        self.max_concurrent_renders = max_concurrent_renders
        self._slots: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()  # event loop -> Semaphore
        self.length = length
        if renderer is None:
            try:
                import captcha.image  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
            except ImportError:
                raise ConfigurationError(
                    "the image captcha needs the 'captcha' package: pip install 'cscapi[web-image]'"
                ) from None
        self.renderer = renderer or _default_renderer
        self._used = _UsedIds()

    @staticmethod
    def normalise(answer: str) -> str:
        """What is compared: upper case, without spaces (the alphabet has no 0/O nor 1/I to confuse)."""
        return "".join(answer.split()).upper()[:20]

    def _new(self, ctx: CaptchaContext) -> tuple[str, str]:
        """A new challenge: its text and its signed token."""
        challenge_id = secrets.token_urlsafe(12)
        text = "".join(secrets.choice(_ALPHABET) for _ in range(self.length))
        digest = ctx.signer.digest("cscapi-image-answer", f"{challenge_id}|{text}")
        token = ctx.signer.sign(_PURPOSE, self.kind, challenge_id, str(int(ctx.now + ctx.lifetime)), ctx.ip, digest)
        return text, token

    def issue(self, ctx: CaptchaContext) -> tuple[dict[str, str], str]:
        text, token = self._new(ctx)
        return self._form(ctx, token, self.renderer(text))

    async def aissue(self, ctx: CaptchaContext) -> tuple[dict[str, str], str]:
        """:meth:`issue` with the PNG rendered in a worker thread, ``max_concurrent_renders`` at a time."""
        import asyncio

        loop = asyncio.get_running_loop()
        slots = self._slots.get(loop)
        if slots is None:
            slots = self._slots[loop] = asyncio.Semaphore(self.max_concurrent_renders)
        text, token = self._new(ctx)
        async with slots:
            png = await asyncio.to_thread(self.renderer, text)
        return self._form(ctx, token, png)

    def _form(self, ctx: CaptchaContext, token: str, png_bytes: bytes) -> tuple[dict[str, str], str]:
        import base64

        png = base64.b64encode(png_bytes).decode("ascii")
        texts = ctx.texts
        return {}, (
            f'<input type="hidden" name="cscapi_challenge" value="{html.escape(token)}">'
            f'<img class="cscapi-image" src="data:image/png;base64,{png}" alt="{html.escape(texts["image_alt"])}" '
            'width="240" height="90">'
            f'<label for="cscapi-answer">{html.escape(texts["image_label"])}</label>'
            '<input id="cscapi-answer" name="answer" type="text" autocomplete="off" autocapitalize="characters" '
            f'spellcheck="false" required maxlength="20"><button type="submit">{html.escape(texts["submit"])}</button>'
        )

    def check(
        self, ctx: CaptchaContext, form: Mapping[str, str], challenge_id: str, expires: int, extra: list[str]
    ) -> bool:
        if not extra:
            return False
        answer = self.normalise(form.get("answer", ""))
        expected = ctx.signer.digest("cscapi-image-answer", f"{challenge_id}|{answer}")
        if not secrets.compare_digest(expected, extra[0]):
            return False
        return self._used.claim(challenge_id, expires, ctx.now)


class _RemoteCaptcha(CaptchaKind):
    """A provider's widget, verified by POSTing its response token to the provider's ``siteverify`` endpoint."""

    script_url: ClassVar[str] = ""
    verify_url: ClassVar[str] = ""
    widget_class: ClassVar[str] = ""
    response_field: ClassVar[str] = ""
    MAX_RESPONSE: ClassVar[int] = 64 * 1024

    def __init__(self, site_key: str, secret_key: str, *, timeout: float = 5.0, transport: Any = None) -> None:
        if not site_key or not secret_key:
            raise ConfigurationError(f"{type(self).__name__} needs the site key and the secret key of your account")
        if not 0 < timeout <= 60:
            raise ConfigurationError("timeout must be > 0 and <= 60 seconds")
        self.site_key = site_key
        self._secret = secret_key
        self.timeout = timeout
        self.transport = transport
        """An ``httpx`` transport (tests pass ``httpx.MockTransport``); None for the real network."""

    def widget(self, ctx: CaptchaContext, challenge_id: str) -> str:
        return (
            f'<script nonce="{ctx.nonce}" src="{self.script_url}" async defer></script>'
            f'<div class="{self.widget_class}" data-sitekey="{html.escape(self.site_key)}"></div>'
            f'<button type="submit">{html.escape(ctx.texts["submit"])}</button>'
        )

    def _params(self, ctx: CaptchaContext, form: Mapping[str, str]) -> dict[str, str] | None:
        response = form.get(self.response_field, "")
        if not response or len(response) > 8192:
            return None
        return {"secret": self._secret, "response": response, "remoteip": ctx.ip}

    def _read(self, status: int, body: bytes) -> bool:
        if status != 200:
            logger.warning("%s verification answered HTTP %d: refusing the captcha", self.kind, status)
            return False
        try:
            data = json.loads(body)
        except ValueError:
            logger.warning("%s verification answered something that is not JSON: refusing the captcha", self.kind)
            return False
        return isinstance(data, dict) and data.get("success") is True

    def check(
        self, ctx: CaptchaContext, form: Mapping[str, str], challenge_id: str, expires: int, extra: list[str]
    ) -> bool:
        import httpx

        params = self._params(ctx, form)
        if params is None:
            return False
        try:
            with (
                httpx.Client(transport=self.transport, timeout=self.timeout) as client,
                client.stream("POST", self.verify_url, data=params) as response,
            ):
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self.MAX_RESPONSE:
                        logger.warning("%s verification answer is too large: refusing the captcha", self.kind)
                        return False
                return self._read(response.status_code, body)
        except httpx.HTTPError as exc:
            logger.warning("%s verification failed (%s): refusing the captcha", self.kind, type(exc).__name__)
            return False

    async def acheck(
        self, ctx: CaptchaContext, form: Mapping[str, str], challenge_id: str, expires: int, extra: list[str]
    ) -> bool:
        import httpx

        params = self._params(ctx, form)
        if params is None:
            return False
        try:
            async with (
                httpx.AsyncClient(transport=self.transport, timeout=self.timeout) as client,
                client.stream("POST", self.verify_url, data=params) as response,
            ):
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self.MAX_RESPONSE:
                        logger.warning("%s verification answer is too large: refusing the captcha", self.kind)
                        return False
                return self._read(response.status_code, body)
        except httpx.HTTPError as exc:
            logger.warning("%s verification failed (%s): refusing the captcha", self.kind, type(exc).__name__)
            return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(site_key={self.site_key!r}, secret_key=***)"


class Turnstile(_RemoteCaptcha):
    """Cloudflare Turnstile (``site_key``, ``secret_key`` from the Cloudflare dashboard)."""

    kind: ClassVar[str] = "turnstile"
    script_url: ClassVar[str] = "https://challenges.cloudflare.com/turnstile/v0/api.js"
    verify_url: ClassVar[str] = "https://challenges.cloudflare.com/turnstile/v0/siteverify"
    widget_class: ClassVar[str] = "cf-turnstile"
    response_field: ClassVar[str] = "cf-turnstile-response"
    external_origins: ClassVar[tuple[str, ...]] = ("https://challenges.cloudflare.com",)


class HCaptcha(_RemoteCaptcha):
    """hCaptcha (``site_key``, ``secret_key`` from the hCaptcha dashboard)."""

    kind: ClassVar[str] = "hcaptcha"
    script_url: ClassVar[str] = "https://js.hcaptcha.com/1/api.js"
    verify_url: ClassVar[str] = "https://api.hcaptcha.com/siteverify"
    widget_class: ClassVar[str] = "h-captcha"
    response_field: ClassVar[str] = "h-captcha-response"
    external_origins: ClassVar[tuple[str, ...]] = ("https://hcaptcha.com", "https://*.hcaptcha.com")


class ReCaptcha(_RemoteCaptcha):
    """Google reCAPTCHA v2 checkbox (``site_key``, ``secret_key`` from the reCAPTCHA admin console)."""

    kind: ClassVar[str] = "recaptcha"
    script_url: ClassVar[str] = "https://www.google.com/recaptcha/api.js"
    verify_url: ClassVar[str] = "https://www.google.com/recaptcha/api/siteverify"
    widget_class: ClassVar[str] = "g-recaptcha"
    response_field: ClassVar[str] = "g-recaptcha-response"
    external_origins: ClassVar[tuple[str, ...]] = ("https://www.google.com", "https://www.gstatic.com")
