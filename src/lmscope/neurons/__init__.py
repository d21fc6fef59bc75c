"""Lecture part 1: what does one neuron do?

Observe (record_neurons -> NeuronRecords: statistics, histograms, top contexts), intervene (neuron_edit,
neuron_effects -> EffectReport: zero, mean, resample ablation and scaling), quantify (neuron_dose_response ->
NeuronDoseResponse), the whole story of one neuron (profile_neuron -> NeuronProfile), and attribute (knowledge neurons:
integrated_gradients, find_knowledge_neurons, number_agreement_experiment -> AgreementExperiment).
corpus_mean_activations: a layer's mean over a corpus, cached, for mean ablation."""
from lmscope.neurons.intervene import (EffectReport, NeuronDoseResponse, neuron_dose_response, neuron_edit,
                                       neuron_effects)
from lmscope.neurons.knowledge import (AgreementExperiment, KnowledgeNeurons, agreement_margins, amplify,
                                       find_knowledge_neurons, integrated_gradients, number_agreement_experiment,
                                       suppress)
from lmscope.neurons.means import corpus_mean_activations
from lmscope.neurons.observe import NeuronRecords, TopContext, record_neurons
from lmscope.neurons.profile import NeuronProfile, profile_neuron

__all__ = ["AgreementExperiment", "EffectReport", "NeuronDoseResponse", "KnowledgeNeurons", "NeuronProfile",
           "NeuronRecords", "TopContext", "agreement_margins", "amplify", "corpus_mean_activations",
           "find_knowledge_neurons", "integrated_gradients", "neuron_dose_response", "neuron_edit",
           "neuron_effects", "number_agreement_experiment", "profile_neuron", "record_neurons", "suppress"]
