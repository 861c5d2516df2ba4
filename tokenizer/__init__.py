"""Item tokenizer: item embeddings -> residual quantization -> collision-free semantic IDs (issue 4).

Nothing is implemented here yet; the package exists so that the layout and the import rule (it may import
`llmrec`, never the other way round) hold from the first commit. Import submodules explicitly: `tokenizer` is
also the name of an unrelated PyPI package.
"""
