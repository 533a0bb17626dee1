"""Order analysis: intensity, CER, order advantage, recommendation, search, sweeps."""
