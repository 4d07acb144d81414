"""The analysis library: what the commands of ``analysis/`` call; it reads studies and never trains."""
