"""Tasks that prove a modality or long context works: data, training, evaluation, plots."""
