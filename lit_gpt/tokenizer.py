"""The tokenizer of a checkpoint directory: SentencePiece (`tokenizer.model`) or HF tokenizers (`tokenizer.json`)."""

import json
from pathlib import Path
from typing import List, Optional, Union

import torch


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
        config = _read_json(checkpoint_dir / "tokenizer_config.json")

        if (checkpoint_dir / "tokenizer.model").is_file():
            from sentencepiece import SentencePieceProcessor

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
            from tokenizers import Tokenizer as HFTokenizer

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
        self.eos_id = eos[0] if isinstance(eos, list) else eos
        self.add_bos_token = bool(config.get("add_bos_token", False))

    @property
    def vocab_size(self) -> int:
        if self.backend == "sentencepiece":
            return self.processor.vocab_size()
        return self.processor.get_vocab_size(with_added_tokens=False)

    def token_to_id(self, token: str) -> int:
        if self.backend == "sentencepiece":
            return self.processor.piece_to_id(token)
        return self.processor.token_to_id(token)

    def encode_ids(self, text: str, bos: Optional[bool] = False, eos: bool = False) -> List[int]:
        return self.encode_batch([text], bos=bos, eos=eos)[0]

    def encode_batch(
        self, texts: List[str], bos: Optional[bool] = False, eos: bool = False, num_threads: int = 1
    ) -> List[List[int]]:
        """Token ids of many texts in one call (the backends' threaded batch APIs). `bos=None` follows the
        tokenizer's `add_bos_token`."""
        if self.backend == "sentencepiece":
            ids = self.processor.encode(texts, num_threads=num_threads)
        else:
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
        self, text: str, bos: Optional[bool] = False, eos: bool = False, device: Optional[torch.device] = None
    ) -> torch.Tensor:
        return torch.tensor(self.encode_ids(text, bos=bos, eos=eos), dtype=torch.int32, device=device)

    def decode(self, tensor: Union[torch.Tensor, List[int]]) -> str:
        ids = tensor.tolist() if isinstance(tensor, torch.Tensor) else list(tensor)
        if isinstance(ids, int):
            ids = [ids]
        return self.processor.decode(ids)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as fp:
        return json.load(fp)
