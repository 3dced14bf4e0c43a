"""FIM formats: layouts exactly as the model cards document them, detection, and encoding."""

from __future__ import annotations

import random

import pytest

from midline.model import fim
from midline.model.fim import FimFormatError, FimPrompt, Snippet

UTIL = Snippet("src/util.py", "def g():\n    pass\n")
FULL = FimPrompt(prefix="def f():\n    ", suffix="\n\nf()\n", path="src/main.py", snippets=[UTIL], repo="acme")
BARE = FimPrompt(prefix="pre", suffix="suf")


# -- layouts ------------------------------------------------------------------------------------

def test_qwen_repo_level():
    assert fim.QWEN.render(FULL) == (
        "<|repo_name|>acme\n"
        "<|file_sep|>src/util.py\ndef g():\n    pass\n"
        "<|file_sep|>src/main.py\n"
        "<|fim_prefix|>def f():\n    <|fim_suffix|>\n\nf()\n<|fim_middle|>"
    )
    assert fim.QWEN.render(BARE) == "<|fim_prefix|>pre<|fim_suffix|>suf<|fim_middle|>"


def test_starcoder2_repo_level():
    assert fim.STARCODER2.render(FULL) == (
        "<repo_name>acme"
        "<file_sep>src/util.py\ndef g():\n    pass\n"
        "<file_sep><fim_prefix>src/main.py\ndef f():\n    <fim_suffix>\n\nf()\n<fim_middle>"
    )
    assert fim.STARCODER2.render(BARE) == "<fim_prefix>pre<fim_suffix>suf<fim_middle>"
    no_path = FimPrompt(prefix="pre", suffix="suf", snippets=[UTIL])
    assert fim.STARCODER2.render(no_path) == ("<file_sep>src/util.py\ndef g():\n    pass\n"
                                              "<file_sep><fim_prefix>pre<fim_suffix>suf<fim_middle>")


def test_starcoder():
    assert fim.STARCODER.render(BARE) == "<fim_prefix>pre<fim_suffix>suf<fim_middle>"


def test_deepseek():
    assert fim.DEEPSEEK.render(BARE) == "<｜fim▁begin｜>pre<｜fim▁hole｜>suf<｜fim▁end｜>"
    # no file tokens: context goes first as comments
    assert fim.DEEPSEEK.render(FULL) == (
        "<｜fim▁begin｜># Path: src/util.py\n# def g():\n#     pass\n# Path: src/main.py\n"
        "def f():\n    <｜fim▁hole｜>\n\nf()\n<｜fim▁end｜>"
    )


def test_codellama():
    assert fim.CODELLAMA.render(BARE) == "<PRE> pre <SUF>suf <MID>"


def test_codestral():
    assert fim.CODESTRAL.render(BARE) == "[SUFFIX]suf[PREFIX]pre"
    with pytest.raises(FimFormatError, match="no PSM layout"):
        fim.CODESTRAL.render(BARE, "psm")


def test_midline_spm_and_psm():
    context = (
        "<|midline:repo_name|>acme\n"
        "<|midline:file_sep|>src/util.py\ndef g():\n    pass\n"
        "<|midline:file_sep|>src/main.py\n"
    )
    assert fim.MIDLINE.default_mode == "spm"
    assert fim.MIDLINE.render(FULL) == context + (
        "<|midline:fim_suffix|>\n\nf()\n<|midline:fim_prefix|>def f():\n    <|midline:fim_middle|>"
    )
    assert fim.MIDLINE.render(FULL, "psm") == context + (
        "<|midline:fim_prefix|>def f():\n    <|midline:fim_suffix|>\n\nf()\n<|midline:fim_middle|>"
    )
    assert fim.MIDLINE.render(BARE) == "<|midline:fim_suffix|>suf<|midline:fim_prefix|>pre<|midline:fim_middle|>"


def test_psm_only_family_refuses_spm():
    with pytest.raises(FimFormatError, match="qwen FIM format has no SPM layout"):
        fim.QWEN.render(BARE, "spm")


def test_stop_tokens():
    assert fim.MIDLINE.stop_tokens == (fim.EOT, fim.FIM_PAD, fim.FIM_PREFIX, fim.FIM_SUFFIX, fim.FIM_MIDDLE,
                                       fim.FILE_SEP, fim.REPO_NAME)
    assert "<|im_end|>" in fim.QWEN.stop_tokens and "<|fim_pad|>" in fim.QWEN.stop_tokens


# -- detection ----------------------------------------------------------------------------------

FAMILY_VOCABS = {
    "midline": list(fim.SPECIAL_TOKENS),
    "qwen": ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>",
             "<|file_sep|>", "<|im_start|>"],
    "starcoder2": ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<repo_name>",
                   "<file_sep>"],
    "starcoder": ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<filename>"],
    "deepseek": ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜fim▁hole｜>", "<｜fim▁begin｜>",
                 "<｜fim▁end｜>", "<|EOT|>"],
    "codellama": ["<s>", "</s>", "<unk>", "▁<PRE>", "<PRE>", "<SUF>", "<MID>", "<EOT>"],
    "codestral": ["<s>", "</s>", "[INST]", "[/INST]", "[PREFIX]", "[SUFFIX]", "[MIDDLE]"],
}


@pytest.mark.parametrize("name", FAMILY_VOCABS)
def test_detect_each_family(name):
    vocab = ["a", "b", "def", "Ġreturn", *FAMILY_VOCABS[name]]
    assert fim.detect(vocab).name == name
    assert fim.get(name).name == name


def test_detect_without_fim_tokens_explains():
    chat_vocab = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "hello"]
    with pytest.raises(FimFormatError, match=r"no fill-in-the-middle tokens.*chat/instruct.*midline\.fimFormat"):
        fim.detect(chat_vocab)
    with pytest.raises(FimFormatError, match="unknown FIM format 'gpt'"):
        fim.get("gpt")


# -- encoding -----------------------------------------------------------------------------------

class FakeTokenizer:
    """Special tokens get ids 1000+; text is one id per character. Parses specials unless told not to."""

    bos_token_id = 999
    unk_token_id = None

    def __init__(self, specials):
        self.vocab = {t: 1000 + i for i, t in enumerate(specials)}

    def convert_tokens_to_ids(self, token):
        return self.vocab.get(token)

    def encode(self, text, add_special_tokens=True, split_special_tokens=False, verbose=True):
        if not split_special_tokens:
            raise AssertionError("FIM text segments must be encoded with split_special_tokens=True")
        return [ord(c) for c in text]


@pytest.mark.parametrize("name", FAMILY_VOCABS)
def test_encode_every_family(name):
    fmt = fim.get(name)
    tokenizer = FakeTokenizer(FAMILY_VOCABS[name])
    ids = fmt.encode(BARE, tokenizer)
    if fmt.bos:
        assert ids[0] == 999
        ids = ids[1:]
    rendered = "".join(chr(i) if i < 999 else _token_of(tokenizer, i) for i in ids)
    assert rendered == fmt.render(BARE)


def test_encode_missing_token_raises():
    with pytest.raises(FimFormatError, match="no token '<|fim_prefix|>'"):
        fim.QWEN.encode(BARE, FakeTokenizer(["<|endoftext|>"]))


def _token_of(tokenizer, token_id):
    return next(t for t, i in tokenizer.vocab.items() if i == token_id)


SPECIAL_IDS = range(len(fim.SPECIAL_TOKENS))  # the tiny tokenizer reserves ids 0..6 for them


@pytest.mark.parametrize("mode", ["spm", "psm"])
def test_special_tokens_are_single_ids_and_text_never_is(tiny_tokenizer, mode):
    sneaky = FimPrompt(
        prefix=f"s = '{fim.EOT}'  # {fim.FIM_MIDDLE}\n",
        suffix=f"\n{fim.FIM_SUFFIX}{fim.FILE_SEP}\n",
        path=f"{fim.REPO_NAME}.py",
        snippets=[Snippet("doc.md", f"literal {fim.FIM_PREFIX} and {fim.FIM_PAD}")],
        repo="acme",
    )
    ids = fim.MIDLINE.encode(sneaky, tiny_tokenizer, mode)
    specials = [(tiny_tokenizer.convert_ids_to_tokens(i)) for i in ids if i in SPECIAL_IDS]
    expected = [text for text, special in fim.MIDLINE.segments(sneaky, mode) if special]
    assert specials == expected
    assert tiny_tokenizer.decode(ids) == fim.MIDLINE.render(sneaky, mode)


def test_encode_example_is_prompt_middle_eot(tiny_tokenizer):
    middle = "return 1  # <|endoftext|>\n"
    ids = fim.MIDLINE.encode_example(FULL, middle, tiny_tokenizer)
    prompt = fim.MIDLINE.encode(FULL, tiny_tokenizer)
    assert ids[: len(prompt)] == prompt
    assert ids[-1] == tiny_tokenizer.convert_tokens_to_ids(fim.EOT) == 0
    assert tiny_tokenizer.decode(ids[len(prompt):-1]) == middle
    assert 0 not in ids[len(prompt):-1]
    assert fim.MIDLINE.encode_example(FULL, "", tiny_tokenizer) == prompt + [0]


DOCUMENTS = [
    "def f(x):\n\treturn x * 2  # ünïcödé ✓\n\n\nclass A:\n    pass\n",
    "  leading spaces\r\nwindows lines\r\n\ttabs\t\tand trailing   \n",
    "emoji 🙂🙃 and CJK 漢字 and <|endoftext|> literally",
]


@pytest.mark.parametrize("mode", ["spm", "psm"])
@pytest.mark.parametrize("document", DOCUMENTS)
def test_fim_round_trip(tiny_tokenizer, document, mode):
    """Cut a document at random points, encode the example, parse it back: prefix + middle + suffix == document."""
    rng = random.Random(f"{document}{mode}")
    token = tiny_tokenizer.convert_tokens_to_ids
    for _ in range(10):
        i, j = sorted(rng.sample(range(len(document) + 1), 2))
        prompt = FimPrompt(prefix=document[:i], suffix=document[j:], path="doc.py")
        ids = fim.MIDLINE.encode_example(prompt, document[i:j], tiny_tokenizer, mode)
        parts = _split_at(ids, {token(fim.FIM_PREFIX), token(fim.FIM_SUFFIX), token(fim.FIM_MIDDLE), token(fim.EOT)})
        text = {tiny_tokenizer.convert_ids_to_tokens(marker): tiny_tokenizer.decode(part) for marker, part in parts}
        assert text[fim.FIM_PREFIX] + text[fim.FIM_MIDDLE] + text[fim.FIM_SUFFIX] == document


def _split_at(ids, markers):
    """[(marker id, ids up to the next marker)] for each marker in ids."""
    parts, current = [], None
    for i in ids:
        if i in markers:
            current = (i, [])
            parts.append(current)
        elif current is not None:
            current[1].append(i)
    return parts
