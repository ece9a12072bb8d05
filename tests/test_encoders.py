"""The numpy MiniLM caption encoder against transformers' BertModel on the same files."""

import numpy as np
import pytest

from data_pipelines.encoders import MiniLMEncoder, minilm_path

TEXTS = ["A red square moves left, quickly.",
         "Café naïve RÉSUMÉ — 東京 🙂 don't stop;it's 3.5x",  # accents, CJK, unknown, splits
         "You are an assistant designed to generate high-quality videos with the highest "
         "degree of image-text alignment based on user prompts. <Prompt Start> a blue circle",
         "word " * 300]  # longer than max_len: truncated, [SEP] kept


@pytest.fixture(scope="module")
def reference():
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    model = transformers.AutoModel.from_pretrained(minilm_path()).eval()

    def encode(text, max_len):
        ids = tokenizer([text], truncation=True, max_length=max_len, return_tensors="pt")
        with torch.no_grad():
            return ids["input_ids"][0].tolist(), model(**ids).last_hidden_state[0].numpy()

    return encode


@pytest.mark.parametrize("max_len", [256, 12])
def test_minilm_matches_transformers_tokens_and_hidden_states(reference, max_len):
    encoder = MiniLMEncoder(max_len=max_len)
    for text, (feats, n) in zip(TEXTS, encoder.encode(TEXTS)):
        ids, want = reference(text, max_len)
        assert encoder.tokenizer.encode(text).ids == ids, text
        assert n == len(ids) <= max_len
        assert feats.dtype == np.float32 and feats.shape == (-(-n // 8) * 8, 384)
        np.testing.assert_allclose(feats[:n], want, atol=2e-5, err_msg=text)
        assert not feats[n:].any()  # rows past the real tokens stay zero


def test_minilm_caches_each_text_and_keeps_the_order():
    encoder = MiniLMEncoder()
    first = encoder.encode(TEXTS[:2])
    again = encoder.encode([TEXTS[1], TEXTS[0], TEXTS[1]])
    assert again[0][0] is first[1][0] and again[1][0] is first[0][0]
    assert again[2][0] is first[1][0]
