"""Code that serving and training share: file hashing, score activation, the teacher's inference.

Nothing here imports ``service`` or ``training``; torch is imported only inside the teacher
functions that run the model.
"""
