"""Lecture part 1: what does one neuron do? Observe (records), intervene (ablate, scale), quantify (dose-response),
attribute (knowledge neurons)."""
from lmscope.neurons.intervene import DoseResponse, EffectReport, dose_response, neuron_edit, neuron_effects
from lmscope.neurons.knowledge import (AgreementExperiment, KnowledgeNeurons, agreement_margins, amplify, find_knowledge_neurons,
                        integrated_gradients, number_agreement_experiment, suppress)
from lmscope.neurons.means import mean_activations
from lmscope.neurons.observe import NeuronRecords, TopContext, record_neurons
from lmscope.neurons.profile import NeuronProfile, profile_neuron

__all__ = ["AgreementExperiment", "DoseResponse", "EffectReport", "KnowledgeNeurons", "NeuronProfile",
           "NeuronRecords", "TopContext", "agreement_margins", "amplify", "dose_response", "find_knowledge_neurons",
           "integrated_gradients", "mean_activations", "neuron_edit", "neuron_effects", "number_agreement_experiment", "profile_neuron",
           "record_neurons", "suppress"]
