"""The toy world: synthetic images, questions and descriptions, and small trained LLaVA targets."""
