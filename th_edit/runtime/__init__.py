"""Running the model, for every package that does (bench, channels, search, subspace):
tokenization (`tokens`), length-sorted left-padded batches and the one loop over them
(`batching.batched`), and forward passes that reuse the residual stream below a layer
(`prefix.PrefixCache`, `batching.CachedBatches`)."""

from th_edit.runtime.batching import Batch, CachedBatches, batched, input_device, left_padded, length_batches
from th_edit.runtime.prefix import PrefixCache
from th_edit.runtime.tokens import Tokenized, candidate_token_ids, encode, pad_id, tokenize_prompts

__all__ = ["Batch", "CachedBatches", "PrefixCache", "Tokenized", "batched", "candidate_token_ids", "encode",
           "input_device", "left_padded", "length_batches", "pad_id", "tokenize_prompts"]
