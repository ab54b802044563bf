"""The medical-diagnosis task as stage types: diagnose, two_stage, label_diseases, label_reasons,
self_instruct, preference_pairs, predict. Prompts are Chinese text files in prompts/ (docs/generators.md)."""
