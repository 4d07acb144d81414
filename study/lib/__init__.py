"""The study library: what the commands of ``study/`` call (one run, studies, designs, storage)."""
