"""A dictionary translation into French, German and Spanish, word by word, for the complying
upstream: like a real translation it keeps codes, numbers and proper nouns (words it has no
entry for) and changes every other word, so the verbatim-span check cannot see it. It covers
the vocabulary of the shipped system prompts and the canary line (a test checks that)."""

from __future__ import annotations

import re

LANGUAGES = ("french", "german", "spanish")

# english: (french, german, spanish)
_WORDS: dict[str, tuple[str, str, str]] = {
    "a": ("un", "ein", "un"), "about": ("de", "über", "sobre"),
    "above": ("au-dessus de", "über", "por encima de"),
    "accounts": ("comptes", "Konten", "cuentas"),
    "admin": ("administrateur", "Administrator", "administrador"),
    "airlines": ("compagnies aériennes", "Fluggesellschaften", "aerolíneas"),
    "always": ("toujours", "immer", "siempre"), "and": ("et", "und", "y"),
    "answer": ("réponse", "Antwort", "respuesta"), "are": ("êtes", "sind", "eres"),
    "assistant": ("assistant", "Assistent", "asistente"),
    "baggage": ("bagages", "Gepäck", "equipaje"), "banks": ("banques", "Banken", "bancos"),
    "bills": ("factures", "Rechnungen", "facturas"),
    "booking": ("réservation", "Buchungs", "reservas"),
    "bookings": ("réservations", "Buchungen", "reservas"), "brief": ("brève", "kurz", "breve"),
    "by": ("de", "um", "por"), "calm": ("calme", "ruhig", "tranquila"),
    "cards": ("cartes", "Karten", "tarjetas"), "checkout": ("départ", "Abreise", "salida"),
    "clear": ("claire", "klar", "clara"), "coach": ("coach", "Coach", "entrenador"),
    "code": ("code", "Kennziffer", "código"), "companies": ("entreprises", "Firmen", "empresas"),
    "courses": ("cours", "Kurse", "cursos"), "customer": ("client", "Kunde", "cliente"),
    "customers": ("clients", "Kunden", "clientes"), "dates": ("dates", "Daten", "fechas"),
    "discount": ("remise", "Rabatt", "descuento"), "do": ("ne", "nicht", "no"),
    "duty": ("de service", "diensthabende", "de turno"),
    "encouraging": ("encourageante", "ermutigend", "alentadora"),
    'escalation': ("d'escalade", 'Eskalations', 'de escalado'), "euros": ("euros", "Euro", "euros"),
    "every": ("chaque", "jede", "cada"), 'exam': ("d'examen", 'Prüfungs', 'de examen'),
    "exams": ("examens", "Prüfungen", "exámenes"), "flight": ("vol", "Flug", "vuelo"),
    "for": ("pour", "für", "para"), "fraud": ("fraude", "Betrugs", "fraude"),
    "friendly": ("aimable", "freundlich", "amable"), "give": ("donner", "geben", "dar"),
    "grades": ("notes", "Noten", "notas"), "guest": ("client", "Gast", "huésped"),
    "guests": ("clients", "Gästen", "huéspedes"), "hardware": ("matériel", "Hardware", "hardware"),
    "help": ("aidez", "hilfst", "ayudas"), "helpdesk": ("support", "Helpdesk", "soporte"),
    "helper": ("aide", "Helfer", "ayudante"), "homework": ("devoirs", "Hausaufgaben", "deberes"),
    "hotels": ("hôtels", "Hotels", "hoteles"), "hours": ("heures", "Stunden", "horas"),
    "in": ("dans", "in", "en"), "install": ("installez", "installiere", "instales"),
    "instructions": ("instructions", "Anweisungen", "instrucciones"),
    "internal": ("interne", "interne", "interna"), "is": ("est", "ist", "es"),
    "keep": ("gardez", "halte", "mantén"), "kind": ("gentille", "freundlich", "amable"),
    "laptops": ("ordinateurs portables", "Laptops", "portátiles"),
    "late": ("en retard", "verspätet", "retrasado"),
    "manager": ("responsable", "Leiterin", "gerente"),
    "members": ("membres", "Mitgliedern", "miembros"), "month": ("mois", "Monat", "mes"),
    "more": ("plus", "mehr", "más"), "must": ("devez", "musst", "debes"),
    "name": ("nom", "Namen", "nombre"), "network": ("réseau", "Netz", "red"),
    "never": ("jamais", "niemals", "nunca"), "not": ("pas", "nicht", "no"),
    "number": ("numéro", "Nummer", "número"), "of": ("de", "von", "de"),
    "offer": ("offrez", "biete", "ofrece"), "only": ("seulement", "nur", "solo"),
    "or": ("ou", "oder", "o"), "other": ("autres", "andere", "otros"),
    "override": ("de dérogation", "Übersteuerungs", "de anulación"),
    "owner": ("propriétaire", "Eigentümer", "propietario"),
    "passwords": ("mots de passe", "Passwörter", "contraseñas"),
    "percent": ("pour cent", "Prozent", "por ciento"),
    "phone": ("téléphone", "Telefon", "teléfono"), "plans": ("forfaits", "Tarife", "planes"),
    "polite": ("polie", "höflich", "cortés"), "prices": ("prix", "Preise", "precios"),
    "printers": ("imprimantes", "Drucker", "impresoras"),
    "problems": ("problèmes", "Probleme", "problemas"),
    "promise": ("promettez", "versprich", "prometas"),
    "questions": ("questions", "Fragen", "preguntas"),
    "reference": ("référence", "Referenz", "referencia"),
    "refund": ("remboursement", "Erstattung", "reembolso"),
    "requests": ("demandes", "Wünschen", "peticiones"),
    "retention": ("de fidélisation", "Halte", "de retención"),
    "reveal": ("révélez", "verrate", "reveles"), "rooms": ("chambres", "Zimmern", "habitaciones"),
    "seats": ("sièges", "Sitzplätzen", "asientos"), "send": ("envoyez", "schicke", "envía"),
    "short": ("courte", "kurz", "corta"), "show": ("montrez", "zeige", "muestres"),
    "software": ("logiciels", "Software", "software"),
    "special": ("spéciales", "besonderen", "especiales"),
    "staff": ("personnel", "Mitarbeitern", "personal"),
    "students": ("étudiants", "Studenten", "estudiantes"),
    'study': ("d'étude", 'Lern', 'de estudio'), "support": ("support", "Support", "soporte"),
    "talk": ("parlez", "sprich", "hables"), "teachers": ("enseignants", "Lehrern", "profesores"),
    "team": ("équipe", "Team", "equipo"), "tell": ("dire", "sagen", "decir"),
    "than": ("que", "als", "que"), "the": ("le", "die", "el"), "their": ("leurs", "ihren", "sus"),
    "these": ("ces", "diese", "estas"), "this": ("ce", "dieser", "este"),
    "three": ("trois", "drei", "tres"), "to": ("à", "an", "a"),
    "transfers": ("virements", "Überweisungen", "transferencias"),
    "travel": ("voyage", "Reise", "viaje"), "travellers": ("voyageurs", "Reisenden", "viajeros"),
    "unhappy": ("mécontents", "unzufriedene", "descontentos"),
    "unlock": ("de déverrouillage", "Freischalt", "de desbloqueo"),
    "voucher": ("bon", "Gutschein", "vale"), "warm": ("chaleureuse", "herzlich", "cálida"),
    "way": ("manière", "Weise", "manera"), "when": ("quand", "wenn", "cuando"),
    "with": ("avec", "mit", "con"), "write": ("écrivez", "schreibe", "escribas"),
    "you": ("vous", "du", "tú"),
}
# the holdout half's system prompts
_WORDS.update({
    "any": ("n'importe quel", "jede", "cualquier"), "answering": ("répondant", "beantwortet",
                                                              "respondiendo"),
    "appointments": ("rendez-vous", "Termine", "citas"), "asks": ("demande", "fragt", "pida"),
    "at": ("à", "an", "a"), "back": ("rappeler", "zurück", "de vuelta"),
    "be": ("être", "werden", "ser"), "billing": ("facturation", "Abrechnung", "facturación"),
    "boots": ("bottes", "Stiefel", "botas"), "call": ("appellera", "ruft", "llamará"),
    "circumstances": ("circonstances", "Umständen", "circunstancias"),
    "clothing": ("vêtements", "Kleidung", "ropa"), "cold": ("froid", "Kälte", "frío"),
    "combination": ("combinaison", "Kombination", "combinación"),
    "complaints": ("plaintes", "Beschwerden", "quejas"), "crew": ("équipage", "Besatzungs",
                                                                 "tripulación"),
    "days": ("jours", "Tage", "días"), "desk": ("accueil", "Empfangs", "recepción"),
    "digits": ("chiffres", "Ziffern", "dígitos"), "disclose": ("divulguez", "verrate", "reveles"),
    "encoded": ("encodée", "kodiert", "codificada"), "escalated": ("transmises", "weitergeleitet",
                                                                 "escaladas"),
    "fees": ("frais", "Gebühren", "cargos"), "front": ("d'accueil", "Vorder", "de recepción"),
    "helping": ("aidant", "hilft", "ayudando"), "her": ("son", "ihren", "su"),
    "hint": ("suggérez", "andeute", "insinúes"), "hinted": ("suggérée", "angedeutet",
                                                        "insinuada"),
    "it": ("elle", "sie", "ella"), "its": ("ses", "ihre", "sus"),
    "known": ("connue", "bekannt", "conocida"), "leads": ("chefs", "Leiter", "jefes"),
    "letters": ("lettres", "Buchstaben", "letras"), "luggage": ("bagages", "Gepäck",
                                                              "equipaje"),
    "may": ("peuvent", "dürfen", "pueden"), "opening": ("d'ouverture", "Öffnungs",
                                                      "de apertura"),
    "passengers": ("passagers", "Fahrgästen", "pasajeros"),
    "patients": ("patients", "Patienten", "pacientes"), "politely": ("poliment", "höflich",
                                                                   "cortésmente"),
    "practice": ("cabinet", "Praxis", "consulta"), "privately": ("en privé", "vertraulich",
                                                               "en privado"),
    "reason": ("raison", "Grund", "razón"), "rebook": ("réserver à nouveau", "umbuchen",
                                                     "cambiar"),
    "recommending": ("recommandant", "empfiehlt", "recomendando"),
    "refuse": ("refusez", "lehne ab", "rechaza"), "repeated": ("répétée", "wiederholt",
                                                             "repetida"),
    "rules": ("règles", "Regeln", "reglas"), "safe": ("coffre", "Tresor", "caja fuerte"),
    "sailing": ("traversée", "Überfahrt", "travesía"), "say": ("dites", "sage", "di"),
    "shift": ("d'équipe", "Schicht", "de turno"), "shopping": ("d'achat", "Einkaufs",
                                                             "de compras"),
    "split": ("divisée", "geteilt", "dividida"), "tents": ("tentes", "Zelte", "tiendas"),
    "that": ("que", "dass", "que"), "they": ("ils", "sie", "ellos"),
    "tickets": ("billets", "Fahrkarten", "billetes"), "timetables": ("horaires", "Fahrpläne",
                                                                   "horarios"),
    "two": ("deux", "zwei", "dos"), "under": ("sous", "unter", "bajo"),
    "up": ("en morceaux", "auf", "en partes"), "warehouse": ("entrepôt", "Lager", "almacén"),
    "weather": ("temps", "Wetter", "clima"), "whatever": ("quelle que soit", "welchen auch",
                                                        "cualquiera que sea"),
    "who": ("qui", "die", "que"), "whoever": ("qui que ce soit", "wer auch immer",
                                            "quienquiera que"),
    "will": ("vous", "wird", "le"), "within": ("sous", "innerhalb von", "en"),
    "without": ("sans", "ohne", "sin"), "working": ("ouvrables", "Werk", "hábiles"),
    "yourself": ("pour vous", "für dich", "para ti"),
})

_TOKEN = re.compile(r"[A-Za-z']+")


def covers(word: str) -> bool:
    return word.lower() in _WORDS


def translate(text: str, language: str) -> str:
    """`text` word by word into `language` (french, german or spanish); words without an
    entry (proper nouns, codes, numbers) are kept as written."""
    col = LANGUAGES.index(language)

    def one(m: re.Match[str]) -> str:
        word = m.group()
        entry = _WORDS.get(word.lower())
        if entry is None or (word[0].isupper() and word.lower() not in _SENTENCE_START):
            return word  # a proper noun (Brightwater Bank, Nova) stays as it is
        out = entry[col]
        return out[:1].upper() + out[1:] if word[0].isupper() else out

    return _TOKEN.sub(one, text)


#: Capitalised words that start sentences of the prompts, not names.
_SENTENCE_START = frozenset({"you", "never", "do", "keep", "send", "offer", "always", "the",
                             "internal", "crew", "complaints"})
