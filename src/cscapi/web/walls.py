"""The ban, captcha and unavailable pages ("walls"): plain, accessible, responsive HTML with no external resource.

Texts (English and French built in, chosen from ``Accept-Language``), colours and an extra stylesheet are
configurable, or the whole page: a :class:`string.Template` text or a callable. Every inserted text is HTML-escaped.
"""

from __future__ import annotations

import html
import re
import string
from collections.abc import Callable, Mapping

from cscapi.errors import ConfigurationError

__all__ = ["DEFAULT_COLORS", "TEXTS", "WALL_KINDS", "Walls"]

WALL_KINDS = ("ban", "captcha", "unavailable")

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "ban_title": "Access denied",
        "ban_heading": "Access denied",
        "ban_message": "Your IP address has been blocked because of suspicious activity. "
        "If you think this is a mistake, contact the site's owner.",
        "captcha_title": "Checking your browser",
        "captcha_heading": "One moment, please",
        "captcha_message": "We need to check that you are not a robot before letting you in.",
        "unavailable_title": "Service unavailable",
        "unavailable_heading": "Service unavailable",
        "unavailable_message": "The site cannot check requests right now. Please try again in a few minutes.",
        "pow_working": "Checking your browser… this takes a few seconds and needs no action.",
        "pow_noscript": "This check needs JavaScript. Please enable it and reload the page.",
        "pow_failed": "The check could not run in this browser. Please reload the page.",
        "image_label": "Type the characters shown in the image",
        "image_alt": "A distorted text to type",
        "submit": "Continue",
        "wrong": "That did not work. Please try again.",
        "footer": "Protected by CrowdSec",
    },
    "fr": {
        "ban_title": "Accès refusé",
        "ban_heading": "Accès refusé",
        "ban_message": "Votre adresse IP a été bloquée en raison d'une activité suspecte. "
        "Si vous pensez qu'il s'agit d'une erreur, contactez le propriétaire du site.",
        "captcha_title": "Vérification de votre navigateur",
        "captcha_heading": "Un instant, s'il vous plaît",
        "captcha_message": "Nous devons vérifier que vous n'êtes pas un robot avant de vous laisser entrer.",
        "unavailable_title": "Service indisponible",
        "unavailable_heading": "Service indisponible",
        "unavailable_message": "Le site ne peut pas vérifier les requêtes pour le moment. "
        "Veuillez réessayer dans quelques minutes.",
        "pow_working": "Vérification de votre navigateur… cela prend quelques secondes, sans action de votre part.",
        "pow_noscript": "Cette vérification nécessite JavaScript. Activez-le puis rechargez la page.",
        "pow_failed": "La vérification n'a pas pu s'exécuter dans ce navigateur. Rechargez la page.",
        "image_label": "Saisissez les caractères affichés dans l'image",
        "image_alt": "Un texte déformé à recopier",
        "submit": "Continuer",
        "wrong": "Cela n'a pas fonctionné. Veuillez réessayer.",
        "footer": "Protégé par CrowdSec",
    },
}

DEFAULT_COLORS = {
    "background": "#f4f5f7",
    "card": "#ffffff",
    "text": "#1f2328",  # contrast 15:1 on the card
    "muted": "#57606a",  # 6.4:1
    "accent": "#0b5cad",  # button background, white text 6.9:1
    "ban": "#a4161a",  # heading of the ban wall, 7.5:1
}

_COLOR = re.compile(r"^[#a-zA-Z0-9(),.% -]{1,64}$")

_CSS = """
*{box-sizing:border-box}
html,body{margin:0;padding:0}
body{min-height:100vh;display:flex;align-items:center;justify-content:center;background:$background;color:$text;
font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;padding:1rem}
main{background:$card;max-width:34rem;width:100%;padding:2rem;border-radius:.75rem;box-shadow:0 2px 12px #0002}
h1{margin:0 0 1rem;font-size:1.5rem;line-height:1.25}
.cscapi-ban h1{color:$ban}
p{margin:0 0 1rem}
form{display:flex;flex-direction:column;gap:.75rem}
label{font-weight:600}
input[type=text]{font:inherit;padding:.6rem;border:2px solid $muted;border-radius:.4rem;letter-spacing:.2em}
button{font:inherit;font-weight:600;padding:.7rem 1rem;border:0;border-radius:.4rem;background:$accent;color:#fff;
cursor:pointer}
button:focus-visible,input:focus-visible{outline:3px solid $accent;outline-offset:2px}
.cscapi-image{max-width:100%;height:auto;border-radius:.4rem}
.cscapi-error{color:$ban;font-weight:600}
footer{margin-top:1.5rem;font-size:.875rem;color:$muted}
"""

DEFAULT_TEMPLATE = """<!DOCTYPE html>
<html lang="$lang">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>$title</title>
<style nonce="$nonce">$style</style>
</head>
<body class="cscapi-$kind">
<main>
<h1>$heading</h1>
<p>$message</p>
$error$content
<footer>$footer</footer>
</main>
</body>
</html>
"""

Template = str | Callable[[str, Mapping[str, str]], str]
"""A whole page of one's own: a :class:`string.Template` text, or ``f(kind, context) -> html``.

The context (and the template's ``$names``) holds ``kind``, ``lang``, ``title``, ``heading``, ``message``,
``footer``, ``error`` (HTML, empty unless a captcha answer was wrong), ``content`` (HTML: the captcha form),
``style`` (CSS) and ``nonce`` (for ``<style nonce=...>`` and ``<script nonce=...>``); every text is already escaped.
"""


class Walls:
    """How the walls look: ``texts`` (``{language: {key: text}}``, merged over the built-in English and French; the
    keys are those of :data:`TEXTS`), ``colors`` (merged over :data:`DEFAULT_COLORS`), ``extra_css`` (appended to the
    built-in stylesheet), ``template`` (a whole page of one's own, see :data:`Template`) and ``default_language``
    (used when ``Accept-Language`` names no language we have)."""

    def __init__(
        self,
        *,
        texts: Mapping[str, Mapping[str, str]] | None = None,
        colors: Mapping[str, str] | None = None,
        extra_css: str = "",
        template: Template | None = None,
        default_language: str = "en",
    ) -> None:
        merged = {lang: dict(t) for lang, t in TEXTS.items()}
        for lang, extra in (texts or {}).items():
            lang = lang.lower()
            unknown = set(extra) - set(TEXTS["en"])
            if unknown:
                raise ConfigurationError(f"unknown wall text keys for {lang!r}: {sorted(unknown)}")
            merged[lang] = {**merged.get(lang, TEXTS["en"]), **extra}
        self.texts = merged
        if default_language.lower() not in merged:
            raise ConfigurationError(f"default_language {default_language!r} has no texts (have: {sorted(merged)})")
        self.default_language = default_language.lower()
        palette = dict(DEFAULT_COLORS)
        for name, value in (colors or {}).items():
            if name not in DEFAULT_COLORS:
                raise ConfigurationError(f"unknown wall colour {name!r} (known: {sorted(DEFAULT_COLORS)})")
            if not isinstance(value, str) or not _COLOR.match(value):
                raise ConfigurationError(f"wall colour {name!r} must be a CSS colour such as #0b5cad, not {value!r}")
            palette[name] = value
        self.colors = palette
        if "</" in extra_css:
            raise ConfigurationError("extra_css may not contain '</' (it is inserted inside <style>)")
        self.style = string.Template(_CSS).substitute(palette) + extra_css
        if template is None:
            template = DEFAULT_TEMPLATE
        if isinstance(template, str):
            self._template: string.Template | None = string.Template(template)
            self._callable: Callable[[str, Mapping[str, str]], str] | None = None
        elif callable(template):
            self._template = None
            self._callable = template
        else:
            raise ConfigurationError("template must be a string.Template text or a callable (kind, context) -> str")

    def language(self, accept_language: str | None) -> str:
        """The language to answer in: the first one of ``Accept-Language`` (by q-value) we have texts for."""
        if not accept_language:
            return self.default_language
        best: tuple[float, int, str] | None = None
        for position, item in enumerate(accept_language[:512].split(",")):
            tag, _, params = item.partition(";")
            tag = tag.strip().lower()
            q = 1.0
            params = params.strip()
            if params.startswith("q="):
                try:
                    q = float(params[2:])
                except ValueError:
                    continue
            lang = tag if tag in self.texts else tag.split("-")[0]
            if lang in self.texts and q > 0 and (best is None or (q, -position) > (best[0], best[1])):
                best = (q, -position, lang)
        return best[2] if best else self.default_language

    def render(self, kind: str, lang: str, *, content: str = "", error: bool = False, nonce: str = "") -> str:
        """The page for ``kind`` (``ban``, ``captcha`` or ``unavailable``) in ``lang``; ``content`` is trusted HTML."""
        texts = self.texts.get(lang) or self.texts[self.default_language]
        context = {
            "kind": kind,
            "lang": html.escape(lang),
            "title": html.escape(texts[f"{kind}_title"]),
            "heading": html.escape(texts[f"{kind}_heading"]),
            "message": html.escape(texts[f"{kind}_message"]),
            "footer": html.escape(texts["footer"]),
            "error": f'<p class="cscapi-error" role="alert">{html.escape(texts["wrong"])}</p>' if error else "",
            "content": content,
            "style": self.style,
            "nonce": nonce,
        }
        if self._callable is not None:
            return self._callable(kind, context)
        assert self._template is not None
        return self._template.safe_substitute(context)
