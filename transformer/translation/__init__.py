"""The German→English translation application built on the model library (:mod:`transformer`).

The corpus (:mod:`.data`), the shared BPE vocabulary (:mod:`.tokenizer`), token-count batches
(:mod:`.batching`), the device and bf16 autocast (:mod:`.devices`), checkpoints on disk
(:mod:`.checkpoint`), BLEU/chrF scoring and batched decoding (:mod:`.evaluation`), training
(:mod:`.training`), and the command lines: translating
(:mod:`.translate`), averaging checkpoints (:mod:`.average`), drawing attention maps
(:mod:`.attention_maps`). The library never imports anything from here.
"""
