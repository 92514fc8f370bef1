"""The data layer: the readers of every input format (`readers`), the preparation engine that tokenizes them into
litdata chunks (`prepare`), the document-separator convention (`separators`), the pretraining data loaders (`loaders`)
and the instruction data of finetuning (`instruct`)."""
