"""The language a document is written in, so that the model is asked to write pairs in it."""

from __future__ import annotations

import itertools

_LANG_NAMES = {
    "en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
    "nl": "Dutch", "pl": "Polish", "cs": "Czech", "sv": "Swedish", "da": "Danish", "no": "Norwegian",
    "nb": "Norwegian", "fi": "Finnish", "ru": "Russian", "uk": "Ukrainian", "tr": "Turkish", "el": "Greek",
    "ja": "Japanese", "zh": "Chinese", "ko": "Korean", "ar": "Arabic", "he": "Hebrew", "hi": "Hindi",
    "id": "Indonesian", "vi": "Vietnamese", "th": "Thai", "hu": "Hungarian", "ro": "Romanian",
}


LANGUAGE_WINDOW = 2000


def detect_language(text: str) -> str:
    """Name of the language ``text`` is written in (py3langid; English for too little text). A long
    text is judged by three 2,000-character windows (its start, a third and two thirds in) rather
    than by all of it: py3langid walks every byte in Python, 3-5 ms for 20,000 characters, and
    planning a big corpus should not wait on that."""
    n = LANGUAGE_WINDOW
    sample = text if len(text) <= 3 * n else "\n".join(text[k:k + n] for k in (0, len(text) // 3, 2 * len(text) // 3))
    if next(itertools.islice(filter(str.isalpha, sample), 39, None), None) is None:  # under 40 letters
        return "English"
    import py3langid

    code, _ = py3langid.classify(sample)
    return _LANG_NAMES.get(code, code)
