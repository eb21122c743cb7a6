"""The scratch text model's WordPiece vocabulary: the same captions give the same tokenizer every time,
frequent words stay whole, and any other word of the captions' characters is spelt in pieces."""
from __future__ import annotations

from core.towers.scratch_text import SPECIALS, train_wordpiece

CAPTIONS = ["A red cube left of a small sphere.", "a red cylinder behind the cube", "two small spheres, one red"] * 3


def test_the_same_captions_give_the_same_tokenizer_every_time():
    # tokenizers' own WordPiece trainer gave a different vocabulary at each call on these captions
    # (ties broken in hash-map order), in one process as in several
    assert len({train_wordpiece(CAPTIONS, 80).to_str() for _ in range(4)}) == 1


def test_frequent_words_are_whole_and_others_are_spelt_in_pieces():
    chars = set("".join(CAPTIONS).lower()) - {" "}
    room = len(SPECIALS) + 2 * len(chars) + 2  # every character alone and as a continuation, then two words
    tok = train_wordpiece(CAPTIONS, room)
    assert tok.get_vocab_size() == room
    assert tok.encode("red cube").tokens == ["[CLS]", "red", "cube", "[SEP]"]  # the most frequent; cube = small, by spelling
    assert tok.encode("sphere").tokens[1:-1] == ["s", "##p", "##h", "##e", "##r", "##e"]
    assert tok.decode(tok.encode("a small sphere").ids, skip_special_tokens=True) == "a small sphere"
    assert tok.encode("a zebra").tokens[-2] == "[UNK]"  # a character the captions never use
