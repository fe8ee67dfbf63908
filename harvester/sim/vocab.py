"""Word pools for generated content: ASCII org keys with dots/dashes, unicode titles."""

from __future__ import annotations

from typing import Final

__all__ = [
    "FORMS",
    "LANGS",
    "LEVELS",
    "ORGS",
    "PATHWAY_TITLES",
    "PREFIXES",
    "PROGRAM_TYPES",
    "SENTENCES",
    "SUBJECTS",
    "SUFFIXES",
    "TOPICS",
    "UNICODE_TITLES",
]

ORGS: Final = (
    "HarvardX",
    "MITx",
    "DelftX",
    "edX",
    "UC3Mx",
    "IBM",
    "Microsoft",
    "LinuxFoundationX",
    "ColumbiaX",
    "UQx",
    "ETHx",
    "KULeuvenX",
    "TUMx",
    "HKUSTx",
    "W3Cx",
    "Open.Univ",
    "ASU-Online",
    "UBC.x",
    "Wharton-Online",
    "NYIF",
    "IITBombayX",
    "SorbonneX",
)
PREFIXES: Final = ("CS", "DS", "PH", "MATH", "ECON", "BIO", "PY", "FIN", "MKT", "ENG", "AI")
SUFFIXES: Final = ("x", "", "x", "X", "")
TOPICS: Final = (
    "Data Science",
    "Machine Learning",
    "Python Programming",
    "Financial Accounting",
    "Supply Chain Management",
    "Climate Change",
    "Public Health",
    "Quantum Mechanics",
    "Cybersecurity",
    "Project Management",
    "Digital Marketing",
    "Linear Algebra",
    "Renewable Energy",
    "Blockchain",
    "Human Rights",
    "Statistics",
    "Cloud Computing",
    "Negotiation",
    "Neuroscience",
    "Product Design",
)
FORMS: Final = (
    "Introduction to {t}",
    "{t} Fundamentals",
    "Advanced {t}",
    "{t} for Everyone",
    "Principles of {t}",
    "Applied {t}",
    "{t}: From Theory to Practice",
    "{t} Essentials",
)
UNICODE_TITLES: Final = (
    "Introducción a la programación",
    "Économie du développement durable",
    "数据结构与算法",
    "Künstliche Intelligenz: Grundlagen",
    "Programação em Python",
    "Основы машинного обучения",
    "統計学入門",
    "Ψηφιακή Διακυβέρνηση",
    "Café, culture et société",
    "Gestión de proyectos ágiles",
    "Ciência de Dados para Não-Programadores",
    "한국어 입문",
)
SENTENCES: Final = (
    "Learn the core ideas through hands-on projects.",
    "Build real skills with weekly labs & peer review.",
    "Understand the theory, then apply it to case studies.",
    "A self-paced path from first principles to practice.",
    "Taught by award-winning faculty; no prior experience needed.",
    "Explore current research and its impact on industry.",
    "Gain job-ready skills valued by employers worldwide.",
)
LEVELS: Final = ("Introductory", "Intermediate", "Advanced")
LANGS: Final = ("English", "Spanish", "French", "Chinese - Mandarin", "Portuguese", "German")
SUBJECTS: Final = (
    "Computer Science",
    "Business & Management",
    "Data Analysis & Statistics",
    "Engineering",
    "Humanities",
    "Economics & Finance",
    "Biology & Life Sciences",
)
PROGRAM_TYPES: Final = ("Professional Certificate", "XSeries", "MicroMasters", "MicroBachelors")
PATHWAY_TITLES: Final = (
    "Become a Data Analyst",
    "Cloud Engineer Pathway",
    "Leadership Essentials",
    "Sustainable Business Track",
)
