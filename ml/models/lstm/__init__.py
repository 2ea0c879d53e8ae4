"""The LSTM next-key model."""

from ml.models.lstm.model import LSTMConfig, NextKeyLSTM

__all__ = ["LSTMConfig", "NextKeyLSTM"]
