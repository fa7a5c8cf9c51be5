"""Models: loading teachers (`builtin:` names, local folders, hub ids; `loading`), text encoders and tokenizers
(`text`), and the embedded teachers with their training and model cards (`shapes_teacher*`)."""
