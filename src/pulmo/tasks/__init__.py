"""Tasks: dataset + model + loss + metrics wiring for train / evaluate / predict."""
