"""The request journal survives any reply text and a torn last line."""

from datakeg.generation.journal import JOURNAL, JOURNAL_DIR, Journal, request_key


def test_lone_surrogates_and_line_separators_are_journaled_and_replayed(tmp_path):
    text = 'x\ud800y \u2028 z\x1c{"pairs": []}'  # json.loads can hand such a string back from a reply
    key = request_key(messages=[{"role": "user", "content": "q\udfff"}], ordinal=0)
    j = Journal(tmp_path)
    j.put(key, text=text, prompt_tokens=1, completion_tokens=2, cost=None)
    j.close()
    raw = (tmp_path / JOURNAL_DIR / JOURNAL).read_bytes()
    assert raw.count(b"\n") == 1
    assert Journal(tmp_path).get(key)["text"] == text


def test_torn_last_line_is_ignored_and_not_glued_to_the_next(tmp_path):
    j = Journal(tmp_path)
    j.put("a", text="one")
    j.close()
    path = tmp_path / JOURNAL_DIR / JOURNAL
    path.write_bytes(path.read_bytes() + b'{"key": "b", "text": "cut sh')  # kill -9 mid-write
    j = Journal(tmp_path)
    assert j.get("a")["text"] == "one" and j.get("b") is None
    j.put("c", text="three")
    j.close()
    j = Journal(tmp_path)
    assert len(j) == 2 and j.get("c")["text"] == "three"
    # an entry is handed out once (a run asks for a key once) and then leaves memory, as do new ones
    assert j.get("c") is None and len(j) == 1
    j.put("d", text="four")
    assert len(j) == 1 and Journal(tmp_path).get("d")["text"] == "four"
