"""Recorded studies of the paper's claims on data bnnkit ships (``bnnkit study``).

- :mod:`bnnkit.study.estimators`: the estimator study: ste, clipped_ste, approx_sign and
  ReSTE at several o_end, trained on the digits models over several seeds; its record.
- :mod:`bnnkit.study.report`: statistics over seeds and the README table, from a record.
- :mod:`bnnkit.study.plots`: the accuracy and trade-off figures (needs matplotlib).
"""
