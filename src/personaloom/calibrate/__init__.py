"""Judge calibration: can the configured Critic experts and evaluation judges do their job with this model?

probes.py builds labelled probes from real conversations (the user's, or the shipped seed set) and from
hand-written data (data/: toxic and benign conversations, contradicting / entailing / unrelated attribute
pairs); measure.py asks every configured judge about them and scores accuracy, position and length bias
and Cohen's kappa; command.py is the glue of `personaloom calibrate` (calibration.json, the table, the
warnings `run` and `evaluate` print). Beyond the SPC paper, which validated its Critic only through the
final human study.
"""
