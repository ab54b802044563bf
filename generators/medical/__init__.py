"""The medical-diagnosis task as stage types: diagnose, two_stage, label_diseases, label_reasons,
self_instruct, preference_pairs, predict, rewrite_record. Prompts are Chinese text files in prompts/;
format.py is the task's one prompt format, shared with the trainers; demos.py is `engine demos`
(docs/generators.md)."""
