"""Conversations -> token ids and loss masks; loaders for the toy world and real datasets."""
