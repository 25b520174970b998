/**
 * The lead import (issue 2), with the rules of the original system: leads matched by email,
 * name/job title overwritten when given, tags added to the set, contact details in
 * lead_infos filled only when blank, city/state found or created in bulk.
 */
import type { Pipeline } from '../engine/pipeline.ts';
import { parseYesNo } from '../validate/boolean.ts';
import { cityName } from '../validate/city.ts';
import { isEmail, normalizeEmail } from '../validate/email.ts';
import { facebookUrl, linkedinUrl, phoneNumber, stateAcronym, tagList, twitterHandle, websiteUrl } from '../validate/social.ts';

export const leads: Pipeline = {
  name: 'leads',
  description: 'Upsert leads by email (original lead-import rules)',
  format: { kind: 'csv' },
  key: {
    name: 'email',
    // The original rule (a name ending in "email"), and the spellings of common exports it
    // missed: Mailchimp's "Email Address", "E-mail" (refused as "email information missing").
    headers: [/\s?email$/i, /^e-?mail(\s+address)?$/i],
    type: 'text',
    multiple: 'first-existing',
    missingMessage: 'invalid file: email information missing',
    blankReason: 'email is blank',
    parse: (v) => {
      const e = normalizeEmail(v);
      return isEmail(e) ? e : { error: `not an email: ${JSON.stringify(v)}` };
    },
  },
  columns: [
    { name: 'name', headers: ['nome', 'name', 'full name', 'first name'], type: 'text' },
    { name: 'job_title', headers: ['job title', 'cargo'], type: 'text' },
    { name: 'tags', headers: ['tags'], type: 'text', parse: tagList },
    { name: 'twitter', headers: ['twitter'], type: 'text', parse: twitterHandle },
    { name: 'facebook', headers: ['facebook'], type: 'text', parse: facebookUrl },
    { name: 'linkedin', headers: ['linkedin'], type: 'text', parse: linkedinUrl },
    { name: 'website', headers: ['website', 'site'], type: 'text', parse: websiteUrl },
    { name: 'mobile_phone', headers: ['celular', 'telefone', 'phone', 'mobile phone'], type: 'text', parse: phoneNumber },
    // Bounded (city.ts): a unique index holds it (cities' name, state_id), whose entries have
    // a size limit. So does leads.email (at most 254 characters, email.ts); name, job title,
    // tags and lead_infos are in no index, so their length has no such limit.
    { name: 'city', headers: ['city', 'cidade'], type: 'text', parse: cityName, onInvalid: 'field' },
    { name: 'state', headers: ['state', 'estado', 'uf'], type: 'text', parse: stateAcronym, onInvalid: 'field' },
    {
      name: 'opportunity',
      headers: ['opportunity', 'oportunidade'],
      type: 'boolean',
      parse: parseYesNo,
      onInvalid: 'field',
    },
    {
      name: 'available_for_mailing',
      headers: ['available for mailing', 'disponível para email', 'disponivel para email', 'disponível para e-mail'],
      type: 'boolean',
      parse: parseYesNo,
      onInvalid: 'field',
    },
  ],
  target: {
    table: 'leads',
    key: 'email',
    fields: [
      { column: 'name', from: 'name', merge: 'overwrite' },
      { column: 'job_title', from: 'job_title', merge: 'overwrite' },
      { column: 'opportunity', from: 'opportunity', merge: 'overwrite' },
      { column: 'available_for_mailing', from: 'available_for_mailing', merge: 'overwrite' },
      { column: 'tags', from: 'tags', merge: 'add-to-set', targetType: 'text[]' },
    ],
    lookups: [
      {
        column: 'state_id',
        merge: 'fill-if-blank',
        table: 'states',
        match: [{ column: 'acronym', from: 'state' }],
        create: [{ column: 'name', from: 'state' }],
      },
      {
        column: 'city_id',
        merge: 'fill-if-blank',
        table: 'cities',
        match: [
          { column: 'name', from: 'city' },
          { column: 'state_id', lookup: 'state_id' },
        ],
      },
    ],
    child: {
      table: 'lead_infos',
      foreignKey: 'lead_id',
      fields: [
        { column: 'twitter', from: 'twitter', merge: 'fill-if-blank' },
        { column: 'facebook', from: 'facebook', merge: 'fill-if-blank' },
        { column: 'linkedin', from: 'linkedin', merge: 'fill-if-blank' },
        { column: 'website', from: 'website', merge: 'fill-if-blank' },
        { column: 'mobile_phone', from: 'mobile_phone', merge: 'fill-if-blank' },
      ],
    },
  },
};
