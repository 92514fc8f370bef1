"""The tokenizer of a checkpoint directory: SentencePiece (`tokenizer.model`) or HF tokenizers (`tokenizer.json`), and
the `tokenizer.json` that encodes like a SentencePiece model (for exports that load with transformers alone)."""

import json
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Union

import torch

if TYPE_CHECKING:
    import tokenizers


class Tokenizer:
    def __init__(self, checkpoint_dir: Union[Path, str]) -> None:
        checkpoint_dir = Path(checkpoint_dir)
        if not checkpoint_dir.is_dir():
            raise NotADirectoryError(
                f"The tokenizer directory {str(checkpoint_dir)!r} does not exist. Download one with "
                "`python scripts/download.py --repo_id meta-llama/Llama-2-7b-hf --tokenizer_only true` "
                "or train one with `python scripts/train_tokenizer.py`."
            )
        self.checkpoint_dir = checkpoint_dir
        self.bos_id: Optional[int] = None
        self.eos_id: Optional[int] = None
        self.add_bos_token = False
        self.use_bos = False
        config = _read_json(checkpoint_dir / "tokenizer_config.json")

        if (checkpoint_dir / "tokenizer.model").is_file():
            from sentencepiece import SentencePieceProcessor  # lazy: only the backend of the directory's files

            self.backend = "sentencepiece"
            try:
                self.processor = SentencePieceProcessor(model_file=str(checkpoint_dir / "tokenizer.model"))
            except Exception as e:
                raise RuntimeError(
                    f"{checkpoint_dir / 'tokenizer.model'} is not a readable SentencePiece model: {e}"
                ) from e
            self.bos_id = self.processor.bos_id() if self.processor.bos_id() >= 0 else None
            self.eos_id = self.processor.eos_id() if self.processor.eos_id() >= 0 else None
        elif (checkpoint_dir / "tokenizer.json").is_file():
            from tokenizers import Tokenizer as HFTokenizer  # lazy: only the backend of the directory's files

            self.backend = "huggingface"
            try:
                self.processor = HFTokenizer.from_file(str(checkpoint_dir / "tokenizer.json"))
            except Exception as e:
                raise RuntimeError(f"{checkpoint_dir / 'tokenizer.json'} is not a readable tokenizers file: {e}") from e
            for attr in ("bos", "eos"):
                token = config.get(f"{attr}_token")
                if isinstance(token, dict):
                    token = token.get("content")
                if token is not None:
                    setattr(self, f"{attr}_id", self.processor.token_to_id(token))
        else:
            raise FileNotFoundError(
                f"No tokenizer in {str(checkpoint_dir)!r}: looked for 'tokenizer.model' (SentencePiece) and "
                "'tokenizer.json' (Hugging Face tokenizers)."
            )

        generation = _read_json(checkpoint_dir / "generation_config.json")
        self.bos_id = generation.get("bos_token_id", self.bos_id)
        eos = generation.get("eos_token_id", self.eos_id)
        self.eos_id = eos[0] if isinstance(eos, list) and eos else eos
        for name in ("bos", "eos"):  # a worker that put "x" after each document failed with a TypeError
            value = getattr(self, f"{name}_id")
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(
                    f"{checkpoint_dir / 'generation_config.json'} says {name}_token_id {value!r}, which is not a token "
                    "id (a whole number); correct it there, or delete the line to use the tokenizer's own"
                )
        self.add_bos_token = bool(config.get("add_bos_token", False))
        # lit-gpt's default for `encode(bos=None)`: the config asks for bos (or for a prefix space), or a Llama
        # tokenizer does not say (StableBeluga2's config)
        llama_silent = config.get("add_bos_token") is None and config.get("tokenizer_class") == "LlamaTokenizer"
        self.use_bos = bool(config.get("add_bos_token") or config.get("add_prefix_space") or llama_silent)

    @property
    def vocab_size(self) -> int:
        if self.backend == "sentencepiece":
            return self.processor.vocab_size()
        return self.processor.get_vocab_size(with_added_tokens=False)

    def token_to_id(self, token: str) -> int:
        if self.backend == "sentencepiece":
            return self.processor.piece_to_id(token)
        return self.processor.token_to_id(token)

    def encode_ids(
        self, text: str, bos: Optional[bool] = False, eos: bool = False, parse_special: bool = False
    ) -> List[int]:
        return self.encode_batch([text], bos=bos, eos=eos, parse_special=parse_special)[0]

    def encode_batch(
        self,
        texts: List[str],
        bos: Optional[bool] = False,
        eos: bool = False,
        num_threads: int = 1,
        parse_special: bool = False,
    ) -> List[List[int]]:
        """Token ids of many texts in one call (the backends' threaded batch APIs). `bos=None` follows the
        tokenizer's `add_bos_token`.

        A special token's spelling inside a text ("<|end_of_text|>", "<|im_end|>" in a web page or a source file) is
        text unless `parse_special`: training data gets its bos/eos only where the separators put them, as
        SentencePiece never reads control tokens from text (a `tokenizer.json` read them by default: a document that
        quoted Llama 3's eos was cut in two by the document mask). Prompts pass `parse_special=True`, as transformers
        and lm-eval encode them."""
        if self.backend == "sentencepiece":
            ids = self.processor.encode(texts, num_threads=num_threads)
        else:
            self.processor.encode_special_tokens = not parse_special
            ids = [e.ids for e in self.processor.encode_batch(texts, add_special_tokens=False)]
        if bos is None:
            bos = self.add_bos_token
        if bos:
            if self.bos_id is None:
                raise NotImplementedError(f"The tokenizer in {self.checkpoint_dir} has no bos token")
            ids = [i if i[:1] == [self.bos_id] else [self.bos_id] + i for i in ids]
        if eos:
            if self.eos_id is None:
                raise NotImplementedError(f"The tokenizer in {self.checkpoint_dir} has no eos token")
            ids = [i + [self.eos_id] for i in ids]
        return ids

    def encode(
        self,
        string: str,
        device: Optional[torch.device] = None,
        bos: Optional[bool] = None,
        eos: bool = False,
        max_length: int = -1,
    ) -> torch.Tensor:
        """lit-gpt's `encode`: the token ids of `string` as an int32 tensor on `device`, cut to `max_length` ids when
        it is positive. `bos=None` prepends bos where lit-gpt does (`use_bos`); the library's own encoding of training
        text (`encode_ids`, `encode_batch`, `lit_gpt/data/separators.py`) never guesses: it says `bos` itself."""
        ids = self.encode_ids(string, bos=self.use_bos if bos is None else bos, eos=eos, parse_special=True)
        if max_length > 0:
            ids = ids[:max_length]
        return torch.tensor(ids, dtype=torch.int32, device=device)

    def decode(self, tensor: Union[torch.Tensor, List[int]]) -> str:
        ids = tensor.tolist() if isinstance(tensor, torch.Tensor) else list(tensor)
        if isinstance(ids, int):
            ids = [ids]
        return self.processor.decode(ids)


def sentencepiece_to_tokenizers(model_file: Union[Path, str], add_bos_token: bool = False) -> "tokenizers.Tokenizer":
    """A Hugging Face `tokenizers.Tokenizer` that gives the ids of the SentencePiece model in `model_file`.

    SentencePiece's BPE merges the adjacent pair whose merged piece has the highest score; a BPE merge list ranked by
    that score (the pieces' vocabulary order on ties) does the same. Spaces and the dummy prefix are SentencePiece's
    normalizer spec, applied as normalizers before the model and not as a pre-tokenizer: the model sees the whole
    text, as SentencePiece's does, so `"  two"` becomes `▁▁ ▁two` and not `▁▁ two`. Unigram models are converted too,
    less exactly: `tokenizers` can break a tie between two equally scored segmentations differently, and can match a
    control or byte piece spelled out in a text ("<0x41>"), which SentencePiece never does. Control
    tokens (`<s>`) are special tokens: loaded with `split_special_tokens` (as `save_tokenizer_files` writes it), a
    literal "<s>" in a text is text, as for SentencePiece. User-defined symbols become added tokens.
    """
    # lazy: protobuf and both backends, only for an export's tokenizer.json
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, processors
    from tokenizers import Tokenizer as HFTokenizer

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    trainer, spec = proto.trainer_spec, proto.normalizer_spec
    piece_type = sentencepiece_model_pb2.ModelProto.SentencePiece
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    matched = {piece_type.NORMAL, piece_type.USER_DEFINED}  # the pieces a text is made of; bytes only as a fallback
    unk_id = next((i for i, (_, _, kind) in enumerate(pieces) if kind == piece_type.UNKNOWN), None)
    if trainer.model_type == trainer.BPE:
        vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
        parts = {piece for piece, _, kind in pieces if kind in matched}
        merges = sorted(
            (-score, i, vocab[piece[:k]], vocab[piece[k:]], piece[:k], piece[k:])
            for i, (piece, score, kind) in enumerate(pieces)
            if kind == piece_type.NORMAL
            for k in range(1, len(piece))
            if piece[:k] in parts and piece[k:] in parts
        )
        unk = pieces[unk_id][0] if unk_id is not None else None
        model = models.BPE(
            vocab, [m[-2:] for m in merges], unk_token=unk, fuse_unk=True, byte_fallback=trainer.byte_fallback
        )
    elif trainer.model_type == trainer.UNIGRAM:
        lowest = min(score for _, score, _ in pieces) - 10.0  # bytes and control tokens are never matched as text
        vocab = [(piece, score if kind in matched else lowest) for piece, score, kind in pieces]
        model = models.Unigram(vocab, unk_id, trainer.byte_fallback)
    else:
        raise ValueError(
            f"{model_file} is a SentencePiece {trainer.ModelType.Name(trainer.model_type)} model; only BPE and "
            "Unigram models convert to tokenizer.json"
        )
    if trainer.treat_whitespace_as_suffix:
        raise ValueError(
            f"{model_file} puts '▁' at the end of words (treat_whitespace_as_suffix), which this conversion does not"
        )

    tokenizer = HFTokenizer(model)
    steps = [normalizers.Precompiled(spec.precompiled_charsmap)] if spec.precompiled_charsmap else []
    if spec.remove_extra_whitespaces:
        # SentencePiece strips and collapses spaces only, not tabs or newlines
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if unk_id is not None:  # SentencePiece decodes an unknown piece as its `unk_surface` (" ⁇ "), not as "<unk>"
        steps.insert(0, decoders.Replace(pieces[unk_id][0], trainer.unk_surface))
    tokenizer.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if spec.add_dummy_prefix else []))
    special = {piece_type.CONTROL, piece_type.UNKNOWN}
    tokenizer.add_special_tokens([AddedToken(p, special=True, normalized=False) for p, _, t in pieces if t in special])
    user = [AddedToken(p, normalized=False) for p, _, t in pieces if t == piece_type.USER_DEFINED]
    tokenizer.add_tokens(user)
    if add_bos_token and trainer.bos_id >= 0:
        bos = (pieces[trainer.bos_id][0], trainer.bos_id)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B", special_tokens=[bos]
        )
    return tokenizer


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as fp:
        return json.load(fp)
